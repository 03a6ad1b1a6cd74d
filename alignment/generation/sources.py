"""What to generate from: a full model (directory or Hub id) or a LoRA adapter on top of a base model.

A trained policy saved as a peft adapter (``adapter_config.json``) is served either by the backend's own LoRA
support or after merging it into a temporary full-model directory (:func:`merge_adapter`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from alignment.models.files import ADAPTER_CONFIG, MERGED_SUBDIR
from alignment.models.loading import DTYPES, is_adapter_dir

_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model")


@dataclass(frozen=True)
class ModelSource:
    """``model``: full model directory or Hub id (the base when ``adapter`` is set); ``tokenizer``: its source."""

    model: str
    tokenizer: str
    adapter: str | None = None

    def describe(self) -> dict[str, str | None]:
        return {"model": self.model, "adapter": self.adapter, "tokenizer": self.tokenizer}


def adapter_rank(adapter: str | Path) -> int:
    """The LoRA rank ``r`` of a saved adapter."""
    config = _adapter_config(adapter)
    rank = config.get("r")
    if not isinstance(rank, int) or rank < 1:
        raise ValueError(f"{Path(adapter) / ADAPTER_CONFIG}: field 'r' must be a positive integer (got {rank!r})")
    return rank


def _adapter_config(adapter: str | Path) -> dict[str, object]:
    path = Path(adapter) / ADAPTER_CONFIG
    try:
        config = json.loads(path.read_text())
    except ValueError as exc:
        raise ValueError(f"{path}: not valid JSON ({exc})") from exc
    if not isinstance(config, dict):
        raise ValueError(f"{path}: expected a JSON object")
    return config


def _has_tokenizer(path: Path) -> bool:
    return any((path / name).is_file() for name in _TOKENIZER_FILES)


def _reachable(name: str) -> bool:
    """An existing directory, or something that does not look like a filesystem path (a Hub id)."""
    if Path(name).is_dir():
        return True
    return bool(name) and not name.startswith(("/", ".", "~")) and name.count("/") <= 1


def resolve_model_source(path: str, base_model: str | None = None) -> ModelSource:
    """Classify ``path``: a full model (directory or Hub id), or an adapter directory plus its base.

    For an adapter, the base is its recorded ``base_model_name_or_path`` when that is an existing directory or
    a Hub id, else ``base_model`` (the recorded path may be from another machine or a deleted temporary
    directory). An adapter
    directory with a ``merged/`` full model beside it is served from that merged model.
    """
    directory = Path(path)
    if not is_adapter_dir(directory):
        return ModelSource(model=path, tokenizer=path)
    merged = directory / MERGED_SUBDIR
    if (merged / "config.json").is_file():
        return ModelSource(model=str(merged), tokenizer=str(merged if _has_tokenizer(merged) else directory))
    recorded = _adapter_config(directory).get("base_model_name_or_path")
    base = recorded if isinstance(recorded, str) and _reachable(recorded) else base_model
    if not base:
        raise ValueError(f"{directory / ADAPTER_CONFIG}: field 'base_model_name_or_path' is {recorded!r}, "
                         "which is missing or not on this machine; pass the base model explicitly")
    tokenizer = str(directory) if _has_tokenizer(directory) else base
    return ModelSource(model=base, tokenizer=tokenizer, adapter=str(directory))


def load_hf_model(source: ModelSource, dtype: str = "float32", attn_implementation: str = "sdpa") -> Any:
    """The source as one transformers model in eval mode: an adapter is loaded with peft and merged in."""
    from alignment.models.loading import load_causal_lm

    model = load_causal_lm(source.model, dtype=dtype, attn_implementation=attn_implementation)
    if source.adapter is not None:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, source.adapter, torch_dtype=DTYPES[dtype]).merge_and_unload()
    model.eval()
    return model


def merge_adapter(source: ModelSource, out_dir: str | Path, dtype: str = "float32") -> ModelSource:
    """Merge ``source.adapter`` into its base and save a full model + tokenizer in ``out_dir``."""
    from alignment.models.loading import load_tokenizer

    if source.adapter is None:
        raise ValueError(f"{source.model} is a full model; there is no adapter to merge")
    model = load_hf_model(source, dtype=dtype)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(out))
    load_tokenizer(source.tokenizer).save_pretrained(str(out))
    return ModelSource(model=str(out), tokenizer=str(out))
