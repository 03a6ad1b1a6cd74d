"""Pretrained models shipped as GGUF files, converted to a plain HF directory (locating the file:
:mod:`alignment.models.gguf_files`).

transformers reads a GGUF file (``from_pretrained(..., gguf_file=...)``, needs the ``gguf`` package). Loaded
the default way the model keeps a GGUF quantizer and ``quantization_config``, refusing ``save_pretrained`` and
training, and for some architectures (when a matmul kernel is installed) it even keeps packed blocks.
:func:`load_gguf_model` asks for ``dequantize=True`` (dense tensors), and :func:`convert_gguf_to_hf` still
rebuilds a plain model from the config without ``quantization_config`` and copies the state dict into it
(strictly), so the saved directory is an ordinary one whichever loading path transformers took. It is saved
with safetensors, with the tokenizer (its chat template included) and the generation config. vLLM on CPU
cannot read GGUF; it loads the saved directory. Caching it is :mod:`alignment.models.gguf_cache`'s job.
"""

from __future__ import annotations

import copy
import importlib.util
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

from alignment.models.gguf_files import resolve_gguf

__all__ = ["convert_gguf_to_hf", "load_gguf_model", "load_gguf_tokenizer", "resolve_gguf"]
GGUF_PACKAGE_PIN = "gguf==0.19.0"
# Rough share of the conversion time per step (measured on CPU): gives the step bar a meaningful ETA.
CONVERSION_STEPS = (("read tokenizer", 5), ("dequantise weights", 15), ("rebuild plain model", 2),
                    ("save weights", 3), ("save tokenizer", 1))


def require_gguf_reader() -> None:
    """Raise ``ImportError`` with the install command when the ``gguf`` package is missing."""
    if importlib.util.find_spec("gguf") is None:
        raise ImportError(f"reading GGUF files needs the gguf package: `pip install {GGUF_PACKAGE_PIN}` "
                          f"(bash scripts/setup.sh installs it)")


def load_gguf_tokenizer(gguf: Path) -> PreTrainedTokenizerBase:
    """The tokenizer stored in the GGUF file (vocabulary, merges, special tokens, chat template)."""
    require_gguf_reader()
    gguf = Path(gguf)
    return AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)


def load_gguf_model(gguf: Path, dtype: torch.dtype = torch.float32) -> PreTrainedModel:
    """The model in the GGUF file with every weight dequantised to ``dtype``, in eval mode."""
    require_gguf_reader()
    gguf = Path(gguf)
    model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=dtype,
                                                 **_dequantize_option())
    return model.eval()


def _dequantize_option() -> dict[str, Any]:
    """``dequantize=True``: never keep packed GGUF blocks (transformers does for some architectures when a
    matmul kernel is installed), so the state dict holds dense tensors. Releases without ``GgufConfig`` always
    dequantise."""
    try:
        from transformers import GgufConfig
    except ImportError:
        return {}
    return {"quantization_config": GgufConfig(dequantize=True)}


def plain_copy(model: PreTrainedModel) -> PreTrainedModel:
    """A regular (unquantized) model of the same architecture holding ``model``'s weights, same dtype.

    The config is copied without ``quantization_config``; every tensor of the state dict must match in name
    and shape (``strict`` loading), so nothing is silently left at its random initialisation.
    """
    config = copy.deepcopy(model.config)
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    dtype = next(model.parameters()).dtype
    plain = AutoModelForCausalLM.from_config(config, dtype=dtype)
    state = {name: tensor.detach().to(dtype) for name, tensor in model.state_dict().items()}
    plain.load_state_dict(state, strict=True)
    plain.generation_config = copy.deepcopy(model.generation_config)
    return plain.eval()


def convert_gguf_to_hf(gguf: Path, out_dir: Path, progress: bool = True) -> dict[str, Any]:
    """Write the GGUF model to ``out_dir`` as a plain fp32 HF directory (``model.safetensors``,
    ``config.json`` without ``quantization_config``, ``generation_config.json``, tokenizer files with the chat
    template). ``out_dir`` should be new or empty. Returns facts for provenance (dtype, parameter count, seconds).
    """
    started = time.perf_counter()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    with _step_bar(progress, f"converting {Path(gguf).name}") as step:
        with step("read tokenizer"):
            tokenizer = load_gguf_tokenizer(gguf)
        with step("dequantise weights"):
            loaded = load_gguf_model(gguf, torch.float32)
        # The GGUF tokenizer claims an unbounded length; the model's context is the real bound.
        tokenizer.model_max_length = int(loaded.config.max_position_embeddings)
        with step("rebuild plain model"):
            model = plain_copy(loaded)
            del loaded
        with step("save weights"):
            model.save_pretrained(str(out_dir), safe_serialization=True)
        with step("save tokenizer"):
            tokenizer.save_pretrained(str(out_dir))
    return {"dtype": "float32", "parameters": sum(p.numel() for p in model.parameters()),
            "architecture": type(model).__name__, "seconds": round(time.perf_counter() - started, 2)}


@contextmanager
def _step_bar(progress: bool, description: str) -> Iterator[Any]:
    """A tqdm bar over :data:`CONVERSION_STEPS`, advanced by each step's weight when it finishes."""
    weights = dict(CONVERSION_STEPS)
    with tqdm(total=sum(weights.values()), desc=description, unit="step-s", disable=not progress,
              bar_format="{desc}: {percentage:3.0f}%|{bar}| [{elapsed}<{remaining}] {postfix}") as bar:

        @contextmanager
        def step(name: str) -> Iterator[None]:
            bar.set_postfix_str(name)
            yield
            bar.update(weights[name])

        yield step
