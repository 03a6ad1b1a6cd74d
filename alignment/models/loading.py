"""Loading policies, references and teachers from HF directories or Hub ids; LoRA via peft; saving results.

Weights are loaded with safetensors (``use_safetensors=True``); ``trust_remote_code`` is passed through only
when the user asked for it.
"""

from __future__ import annotations

import copy
import importlib.util
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

from alignment.models.files import ADAPTER_CONFIG, MERGED_SUBDIR

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


@dataclass
class LoraSpec:
    """peft LoRA settings; ``target_modules=["all-linear"]`` adapts every linear layer except the LM head."""

    r: int = 16
    alpha: int = 32
    dropout: float = 0.0
    target_modules: list[str] = field(default_factory=lambda: ["all-linear"])


def is_adapter_dir(path: str | Path) -> bool:
    """Whether ``path`` is a saved peft adapter (rather than a full model)."""
    return (Path(path) / ADAPTER_CONFIG).is_file()


def load_tokenizer(path: str, trust_remote_code: bool = False) -> PreTrainedTokenizerBase:
    """The tokenizer of a model directory or Hub id; a pad token is required (falls back to EOS)."""
    tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def resolve_attn_implementation(requested: str, needs_4d_mask: bool = False) -> str:
    """The attention kernel for ``model.attn_implementation``: ``auto`` means flash_attention_2 when the
    ``flash-attn`` package (the ``flash-attn`` extra) is installed, a CUDA device is present and no 4-D mask is
    needed (prefix sharing needs one, which flash-attn does not take); otherwise SDPA. Explicit names pass
    through unchanged."""
    if requested != "auto":
        return requested
    if needs_4d_mask or not torch.cuda.is_available() or importlib.util.find_spec("flash_attn") is None:
        return "sdpa"
    return "flash_attention_2"


def load_causal_lm(path: str, dtype: str = "float32", attn_implementation: str = "sdpa",
                   trust_remote_code: bool = False) -> PreTrainedModel:
    """A causal LM from a full model directory, a Hub id, or a LoRA adapter directory (merged onto its base).

    ``attn_implementation`` may be ``auto`` (see :func:`resolve_attn_implementation`).
    """
    attn_implementation = resolve_attn_implementation(attn_implementation)
    if is_adapter_dir(path):
        from peft import AutoPeftModelForCausalLM

        peft_model = AutoPeftModelForCausalLM.from_pretrained(path, dtype=DTYPES[dtype],
                                                              trust_remote_code=trust_remote_code)
        return peft_model.merge_and_unload()
    model = AutoModelForCausalLM.from_pretrained(
        path, dtype=DTYPES[dtype], attn_implementation=attn_implementation, use_safetensors=True,
        trust_remote_code=trust_remote_code,
    )
    return model


def add_lora(model: PreTrainedModel, spec: LoraSpec) -> Any:
    """Wrap ``model`` with fresh LoRA adapters (only adapter weights stay trainable)."""
    from peft import LoraConfig, get_peft_model

    targets: Any = spec.target_modules[0] if spec.target_modules == ["all-linear"] else list(spec.target_modules)
    config = LoraConfig(task_type="CAUSAL_LM", r=spec.r, lora_alpha=spec.alpha, lora_dropout=spec.dropout,
                        target_modules=targets, bias="none")
    return get_peft_model(model, config)


def enable_gradient_checkpointing(model: PreTrainedModel) -> None:
    """Recompute each layer's activations in the backward pass instead of keeping them: less memory, about one
    more forward per step. Non-reentrant checkpointing, so it also works when only LoRA adapters train."""
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model.config.use_cache = False


def frozen_copy(model: PreTrainedModel) -> PreTrainedModel:
    """An eval-mode, gradient-free deep copy: the reference model when it is the policy's initialisation."""
    reference = copy.deepcopy(model)
    return freeze(reference)


def freeze(model: PreTrainedModel) -> PreTrainedModel:
    """Eval mode (dropout off) and no gradients."""
    model.eval()
    for parameter in model.parameters():
        parameter.requires_grad_(False)
    return model


def disable_dropout(model: torch.nn.Module) -> None:
    """Set every dropout probability to 0 so policy and reference log-probs are comparable."""
    for module in model.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0


def save_trained(model: Any, tokenizer: PreTrainedTokenizerBase, path: str | Path, merged: bool) -> list[str]:
    """Save the trained model as an HF directory; a LoRA model is saved as its adapter, plus ``merged/``
    (:data:`~alignment.models.files.MERGED_SUBDIR`) when ``merged``.

    Returns the sub-paths written (relative to ``path``).
    """
    path = Path(path)
    written = []
    model.save_pretrained(path, safe_serialization=True)
    tokenizer.save_pretrained(path)
    written.append(".")
    if merged and hasattr(model, "merge_and_unload"):
        full = copy.deepcopy(model).merge_and_unload()
        full.save_pretrained(path / MERGED_SUBDIR, safe_serialization=True)
        tokenizer.save_pretrained(path / MERGED_SUBDIR)
        written.append(MERGED_SUBDIR)
    return written
