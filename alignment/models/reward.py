"""Scalar reward models built from any causal-LM directory, and saved as plain sequence-classification models.

:func:`build_reward_model` loads the causal LM's weights into ``AutoModelForSequenceClassification`` with one
label: the transformer body comes from the checkpoint, the ``score`` head (hidden -> 1, no bias) is new. The
head reads the hidden state of the last token that is not ``config.pad_token_id`` in each row; the pad id is
taken from the tokenizer. When the tokenizer pads with its EOS token (``load_tokenizer``'s fallback), a
response's final EOS counts as padding too and the reward is read at the token before it; training and
:class:`alignment.ranking.reward_model.RewardModelRanker` use the same head, so they always agree.

With LoRA, peft wraps the model for sequence classification (``task_type="SEQ_CLS"``): adapters on the body,
and the ``score`` head fully trainable (``modules_to_save``). :func:`save_reward_model` merges the adapters and
writes a plain directory (config, ``model.safetensors``, tokenizer) that ``AutoModelForSequenceClassification
.from_pretrained`` loads with no peft involved.
"""

from __future__ import annotations

import copy
import os
import shutil
from pathlib import Path
from typing import Any

import torch
from transformers import AutoModelForSequenceClassification, PreTrainedTokenizerBase

from alignment.models.loading import DTYPES, LoraSpec, is_adapter_dir, resolve_attn_implementation

SCORE_HEAD = "score"


def build_reward_model(path: str, tokenizer: PreTrainedTokenizerBase, dtype: str | torch.dtype = "float32",
                       lora: LoraSpec | None = None, attn_implementation: str = "sdpa", seed: int = 0) -> Any:
    """A one-label sequence-classification model from the causal LM at ``path`` (directory or Hub id).

    ``tokenizer`` must have a pad token (see :func:`alignment.models.loading.load_tokenizer`); its id becomes
    ``config.pad_token_id``. The new ``score`` head is initialised from ``seed`` (the global RNG is left as it
    was). With ``lora``, returns a peft ``PeftModelForSequenceClassification`` whose adapters and ``score``
    head are the only trainable parameters.
    """
    if is_adapter_dir(path):
        raise ValueError(f"{path}: a LoRA adapter directory; build the reward model from a full model "
                         "directory (e.g. the trained model's merged/ directory)")
    if tokenizer.pad_token_id is None:
        raise ValueError(f"{path}: the tokenizer has no pad token; the reward head finds each row's last token "
                         "by the pad id (load it with alignment.models.loading.load_tokenizer)")
    torch_dtype = DTYPES[dtype] if isinstance(dtype, str) else dtype
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = AutoModelForSequenceClassification.from_pretrained(
            path, num_labels=1, dtype=torch_dtype, use_safetensors=True,
            attn_implementation=resolve_attn_implementation(attn_implementation), pad_token_id=tokenizer.pad_token_id)
    model.config.pad_token_id = tokenizer.pad_token_id
    if not isinstance(getattr(model, SCORE_HEAD, None), torch.nn.Module):
        raise ValueError(f"{path}: {type(model).__name__} has no '{SCORE_HEAD}' head; only causal-LM "
                         "architectures whose sequence-classification class scores with one are supported")
    return add_reward_lora(model, lora) if lora is not None else model


def add_reward_lora(model: Any, spec: LoraSpec) -> Any:
    """Wrap ``model`` with fresh LoRA adapters for sequence classification; the ``score`` head trains fully."""
    from peft import LoraConfig, get_peft_model

    targets: Any = spec.target_modules[0] if spec.target_modules == ["all-linear"] else list(spec.target_modules)
    config = LoraConfig(task_type="SEQ_CLS", r=spec.r, lora_alpha=spec.alpha, lora_dropout=spec.dropout,
                        target_modules=targets, bias="none", modules_to_save=[SCORE_HEAD])
    return get_peft_model(model, config)


def plain_reward_model(model: Any) -> Any:
    """``model`` itself, or a merged copy without peft when it carries LoRA adapters (``model`` is unchanged)."""
    if hasattr(model, "merge_and_unload"):
        return copy.deepcopy(model).merge_and_unload()
    return model


def save_reward_model(model: Any, tokenizer: PreTrainedTokenizerBase, out_dir: str | Path,
                      overwrite: bool = False) -> Path:
    """Write ``model`` (LoRA merged; pass it unwrapped from accelerate) and ``tokenizer`` to ``out_dir``.

    The directory is written under a temporary name and renamed when complete. An existing ``out_dir`` is an
    error unless ``overwrite``, in which case it is replaced only once the new one is complete.
    """
    target = Path(out_dir)
    if target.exists() and not overwrite:
        raise FileExistsError(f"{target}: already exists; refusing to overwrite a saved reward model")
    plain = plain_reward_model(model)
    plain.config.pad_token_id = tokenizer.pad_token_id
    target.parent.mkdir(parents=True, exist_ok=True)
    temporary = target.with_name(f".{target.name}.tmp-{os.getpid()}")
    shutil.rmtree(temporary, ignore_errors=True)
    plain.save_pretrained(str(temporary))  # safetensors: transformers 5 writes no other format
    tokenizer.save_pretrained(str(temporary))
    if target.exists():
        previous = target.with_name(f".{target.name}.old-{os.getpid()}")
        os.rename(target, previous)
        os.rename(temporary, target)
        shutil.rmtree(previous)
    else:
        os.rename(temporary, target)
    return target
