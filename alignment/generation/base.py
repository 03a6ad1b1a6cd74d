"""The generation interface shared by every backend: sampling settings, results, prompt encoding.

A backend receives *token ids* (the chat template already applied exactly once, by :func:`chat_prompt_ids`)
and returns one :class:`Completion` per prompt. Backends never re-tokenize prompt text, so no second BOS can
sneak in (vLLM's text path would add one: vllm-project/vllm#9519).
"""

from __future__ import annotations

import abc
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, TypeVar

from alignment.hashing import sha256_text

FINISH_STOP = "stop"  # EOS or a stop string ended the response
FINISH_LENGTH = "length"  # max_new_tokens reached: the response is truncated
_SEED_MASK = 0x7FFFFFFF
BackendT = TypeVar("BackendT", bound="GenerationBackend")
ProgressFn = Callable[[int], None]  # called with how many more items just finished (advances a progress bar)


@dataclass(frozen=True)
class SamplingSettings:
    """How responses are sampled; identical meaning in every backend.

    ``temperature=0`` is greedy decoding (all ``n`` responses are then equal). ``top_k<=0`` and ``top_p=1``
    disable those filters. ``stop`` strings end a response and are not included in its text. ``seed`` makes
    sampling reproducible: every prompt gets its own seed derived from it (see :func:`request_seed`).
    """

    n: int = 1
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = -1
    max_new_tokens: int = 32
    stop: tuple[str, ...] = ()
    seed: int = 0

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0

    def validate(self) -> list[str]:
        """Problems with these settings (empty when valid)."""
        problems = []
        if self.n < 1:
            problems.append(f"n must be >= 1 (got {self.n})")
        if self.temperature < 0:
            problems.append(f"temperature must be >= 0 (got {self.temperature})")
        if not 0.0 < self.top_p <= 1.0:
            problems.append(f"top_p must be in (0, 1] (got {self.top_p})")
        if self.max_new_tokens < 1:
            problems.append(f"max_new_tokens must be >= 1 (got {self.max_new_tokens})")
        if any(not s for s in self.stop):
            problems.append("stop strings must be non-empty")
        return problems

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON form (for manifests)."""
        data = asdict(self)
        data["stop"] = list(self.stop)
        return data


@dataclass
class Completion:
    """The ``n`` responses to one prompt, in sampling order.

    ``n_tokens`` counts generated tokens (EOS included when produced); ``prompt_token_ids`` are the ids the
    backend actually fed to the model.
    """

    texts: list[str]
    finish_reasons: list[str]
    n_tokens: list[int]
    prompt_token_ids: list[int] = field(default_factory=list)


@dataclass(frozen=True)
class BackendOptions:
    """Runtime knobs of a backend (they never change what a correct backend computes).

    ``batch_size``: prompts per ``generate`` call of the hf backend. ``tensor_parallel_size``, ``kv_cache_gb``,
    ``gpu_memory_utilization``, ``max_model_len``, ``enforce_eager``: vLLM engine settings (``kv_cache_gb`` is
    mostly for CPU, where vLLM otherwise reads ``VLLM_CPU_KVCACHE_SPACE``). ``lora_mode``: ``auto`` serves an
    adapter with vLLM's LoRA support and falls back to merging it into a temporary directory; ``vllm`` or
    ``merge`` force one way. ``seed``: the engine's global seed. ``device``: where the hf backend runs
    (``None``: the first GPU when there is one, else the CPU).
    """

    dtype: str = "float32"
    batch_size: int = 16
    tensor_parallel_size: int = 1
    max_model_len: int | None = None
    kv_cache_gb: float | None = None
    gpu_memory_utilization: float = 0.9
    enforce_eager: bool = False
    lora_mode: str = "auto"
    attn_implementation: str = "sdpa"
    seed: int = 0
    device: str | None = None


class GenerationBackend(abc.ABC):
    """One loaded model that turns prompt token ids into sampled responses."""

    name: str = "?"
    tokenizer: Any = None
    startup_seconds: float = 0.0

    @abc.abstractmethod
    def generate(self, prompts: Sequence[Sequence[int]], settings: SamplingSettings,
                 seeds: Sequence[int] | None = None, on_done: ProgressFn | None = None) -> list[Completion]:
        """One :class:`Completion` per prompt (same order). ``seeds``: one per prompt (default: ``settings.seed``).
        ``on_done(k)`` is called whenever ``k`` more prompts are finished (each prompt is counted once)."""

    def describe(self) -> dict[str, Any]:
        """What was loaded and how (for manifests)."""
        return {"backend": self.name, "startup_seconds": round(self.startup_seconds, 3)}

    def close(self) -> None:  # noqa: B027 - optional hook; most backends just drop their model
        """Release the model (and any temporary files)."""

    def __enter__(self: BackendT) -> BackendT:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def chat_prompt_ids(tokenizer: Any, messages: Sequence[dict[str, str]]) -> list[int]:
    """Token ids of ``messages`` with the assistant turn opened: exactly what the model is conditioned on.

    Equals ``tokenizer.apply_chat_template(messages, add_generation_prompt=True)`` (the template supplies BOS;
    nothing is added on top). A tokenizer without a chat template is refused: a plain-text fallback would make
    the policy see a format it was not trained on.
    """
    if not getattr(tokenizer, "chat_template", None):
        raise ValueError("the tokenizer has no chat_template; generation needs one to format prompts "
                         "(use a chat/instruct model or set tokenizer.chat_template)")
    encoded = tokenizer.apply_chat_template([dict(m) for m in messages], add_generation_prompt=True,
                                            tokenize=True)
    ids = encoded["input_ids"] if hasattr(encoded, "keys") else encoded
    return [int(token) for token in ids]


def request_seed(seed: int, key: str) -> int:
    """A per-prompt seed from the run seed and a stable key (the prompt id): independent of batching/sharding."""
    return int(sha256_text(f"{seed}:{key}")[:8], 16) & _SEED_MASK


def cut_at_stop(text: str, stop: Sequence[str]) -> tuple[str, bool]:
    """``text`` cut before the earliest stop string, and whether one was found."""
    positions = [text.find(s) for s in stop if s and s in text]
    if not positions:
        return text, False
    return text[: min(positions)], True


def check_settings(settings: SamplingSettings) -> None:
    """Raise ``ValueError`` listing every problem of ``settings``."""
    problems = settings.validate()
    if problems:
        raise ValueError("invalid sampling settings: " + "; ".join(problems))
