"""Generation with transformers ``generate``: batched, left-padded, KV cache on.

Sampling is seeded per batch (the seeds of the batch's prompts are combined), so a batch of the same prompts
gives the same responses; unlike vLLM the sample of one prompt depends on its batch mates.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
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
    cut_at_stop,
    request_seed,
)
from alignment.generation.sources import ModelSource, load_hf_model

INCOMPLETE_CHAR = "\ufffd"


class HFBackend(GenerationBackend):
    """A transformers causal LM (an adapter is merged in on load)."""

    name = "hf"

    def __init__(self, source: ModelSource, options: BackendOptions | None = None):
        from alignment.models.loading import load_tokenizer

        started = time.perf_counter()
        self.options = options or BackendOptions()
        self.source = source
        self.tokenizer = load_tokenizer(source.tokenizer)
        self.device = torch.device(self.options.device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.model = load_hf_model(source, self.options.dtype, self.options.attn_implementation).to(self.device)
        self.startup_seconds = time.perf_counter() - started

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), **self.source.describe(), "batch_size": self.options.batch_size,
                "device": str(self.device),
                "adapter_mode": "merged in memory" if self.source.adapter else None}

    def generate(self, prompts: Sequence[Sequence[int]], settings: SamplingSettings,
                 seeds: Sequence[int] | None = None, on_done: ProgressFn | None = None) -> list[Completion]:
        check_settings(settings)
        seeds = list(seeds) if seeds is not None else [settings.seed] * len(prompts)
        if len(seeds) != len(prompts):
            raise ValueError(f"got {len(seeds)} seeds for {len(prompts)} prompts")
        completions: list[Completion] = []
        size = max(1, self.options.batch_size)
        for start in range(0, len(prompts), size):
            batch = [list(map(int, p)) for p in prompts[start:start + size]]
            completions += self._generate_batch(batch, settings, seeds[start:start + size])
            if on_done is not None:
                on_done(len(batch))
        return completions

    def _generate_batch(self, batch: list[list[int]], settings: SamplingSettings,
                        seeds: list[int]) -> list[Completion]:
        input_ids, attention_mask = left_pad(batch, self._pad_id())
        samples = 1 if settings.greedy else settings.n
        with torch.random.fork_rng(devices=[]), torch.inference_mode():
            torch.manual_seed(request_seed(settings.seed, ",".join(map(str, seeds))))
            output = self.model.generate(input_ids=input_ids.to(self.device),
                                         attention_mask=attention_mask.to(self.device), tokenizer=self.tokenizer,
                                         **self._generate_kwargs(settings, samples))
        generated = output[:, input_ids.shape[1]:].tolist()
        completions = []
        for i, prompt in enumerate(batch):
            rows = generated[i * samples:(i + 1) * samples]
            decoded = [self._decode(row, settings) for row in rows]
            if settings.greedy:  # greedy samples are all equal: compute one, repeat it
                decoded = decoded * settings.n
            completions.append(Completion(texts=[d[0] for d in decoded], finish_reasons=[d[1] for d in decoded],
                                          n_tokens=[d[2] for d in decoded], prompt_token_ids=prompt))
        return completions

    def _pad_id(self) -> int:
        pad = self.tokenizer.pad_token_id
        return int(pad if pad is not None else self.tokenizer.eos_token_id)

    def _generate_kwargs(self, settings: SamplingSettings, samples: int) -> dict[str, Any]:
        """A complete ``GenerationConfig``: nothing from the checkpoint's own generation config (such as a
        repetition penalty) applies, as in vLLM with explicit sampling parameters; its EOS ids do apply."""
        from transformers import GenerationConfig

        config = GenerationConfig(max_new_tokens=settings.max_new_tokens, pad_token_id=self._pad_id(),
                                  eos_token_id=self._eos_ids(), use_cache=True, do_sample=not settings.greedy,
                                  num_return_sequences=samples)
        if not settings.greedy:
            config.temperature, config.top_p = settings.temperature, settings.top_p
            config.top_k = settings.top_k if settings.top_k > 0 else 0
        if settings.stop:
            config.stop_strings = list(settings.stop)
        return {"generation_config": config}

    def _eos_ids(self) -> list[int]:
        """The tokenizer's EOS plus any listed in the checkpoint's generation config (vLLM stops on both)."""
        ids = {int(self.tokenizer.eos_token_id)}
        listed = getattr(getattr(self.model, "generation_config", None), "eos_token_id", None)
        ids.update([listed] if isinstance(listed, int) else list(listed or []))
        return sorted(ids)

    def _decode(self, ids: list[int], settings: SamplingSettings) -> tuple[str, str, int]:
        """(text, finish reason, generated token count) of one generated row (padding after EOS removed)."""
        eos = set(self._eos_ids())
        end = next((i for i, token in enumerate(ids) if token in eos), None)
        if end is not None:
            tokens, ended = ids[: end + 1], True
        else:
            tokens = strip_trailing(ids, self._pad_id())
            ended = len(tokens) < settings.max_new_tokens  # only a stop string ends a row early without EOS
        # A response cut inside a multi-byte character decodes to a trailing U+FFFD; vLLM's incremental
        # detokenizer never emits that incomplete character, so drop it here too.
        text = self.tokenizer.decode(tokens, skip_special_tokens=True).rstrip(INCOMPLETE_CHAR)
        text, stopped = cut_at_stop(text, settings.stop)
        return text, FINISH_STOP if ended or stopped else FINISH_LENGTH, len(tokens)

    def close(self) -> None:
        self.model = None


def left_pad(batch: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(input_ids, attention_mask)``, both ``[batch, max_len]``, prompts right-aligned (padding on the left)."""
    width = max(len(ids) for ids in batch)
    input_ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((len(batch), width), dtype=torch.long)
    for row, ids in enumerate(batch):
        if not ids:
            raise ValueError(f"prompt {row} of the batch is empty")
        input_ids[row, width - len(ids):] = torch.tensor(ids, dtype=torch.long)
        attention_mask[row, width - len(ids):] = 1
    return input_ids, attention_mask


def strip_trailing(ids: list[int], pad_id: int) -> list[int]:
    """``ids`` without the pad tokens ``generate`` appends after a row has finished."""
    end = len(ids)
    while end > 0 and ids[end - 1] == pad_id:
        end -= 1
    return ids[:end]
