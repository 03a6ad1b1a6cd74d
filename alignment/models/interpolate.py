"""Linear weight interpolation between two models of the same base: θ = α·θ_a + (1−α)·θ_b.

A zero-training baseline for combining two fine-tunes (e.g. an SFT-only and a preference-only model), in the
spirit of model soups / weight averaging. LoRA adapters are merged onto their base first, so two adapters of
one base interpolate their weight deltas: θ = θ_base + α·ΔW_a + (1−α)·ΔW_b.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Mapping
from pathlib import Path

import torch

from alignment.generation.sources import resolve_model_source
from alignment.models.loading import load_causal_lm, load_tokenizer


def interpolate_state_dicts(a: Mapping[str, torch.Tensor], b: Mapping[str, torch.Tensor],
                            alpha: float) -> dict[str, torch.Tensor]:
    """``alpha·a + (1−alpha)·b`` for every tensor; the two must hold the same names and shapes (same base)."""
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1] (got {alpha})")
    if a.keys() != b.keys():
        only = sorted(set(a) ^ set(b))[:5]
        raise ValueError(f"the two models have different parameters (e.g. {only}): not the same base architecture")
    mixed = {}
    for name, left in a.items():
        right = b[name]
        if left.shape != right.shape:
            raise ValueError(f"parameter {name}: shapes {tuple(left.shape)} and {tuple(right.shape)} differ")
        mixed[name] = torch.lerp(right.float(), left.float(), alpha).to(left.dtype) if left.is_floating_point() \
            else left.clone()
    return mixed


def interpolate_models(a: str | Path, b: str | Path, alpha: float, out_dir: str | Path,
                       dtype: str = "float32") -> Path:
    """Write ``alpha·a + (1−alpha)·b`` as a plain Hugging Face directory (safetensors + ``a``'s tokenizer).

    ``a`` and ``b``: full model directories or LoRA adapter directories of the same base. The directory is
    written to a temporary sibling and renamed into place, so ``out_dir`` is complete or absent.
    """
    out = Path(out_dir)
    if out.exists():
        raise FileExistsError(f"{out} exists; choose another output directory")
    model_a = load_causal_lm(str(a), dtype)
    state_b = load_causal_lm(str(b), dtype).state_dict()
    model_a.load_state_dict(interpolate_state_dicts(model_a.state_dict(), state_b, alpha))
    out.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        model_a.save_pretrained(work, safe_serialization=True)
        load_tokenizer(resolve_model_source(str(a)).tokenizer).save_pretrained(work)  # an adapter's: its base's
        os.rename(work, out)
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    return out
