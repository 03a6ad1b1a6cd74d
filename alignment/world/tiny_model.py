"""Tiny Llama-style causal LMs built from a fixed config and seed, for the embedded world.

head_dim is 64 in every size because vLLM's CPU attention kernels support it; embeddings are untied so the
saved directory looks like an ordinary Llama checkpoint to any loader.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerBase

HEAD_DIM = 64

# Shape knobs per size; vocabulary and special-token ids come from the tokenizer at build time.
MODEL_SIZES: dict[str, dict[str, Any]] = {
    "tiny": {"hidden_size": 256, "num_hidden_layers": 4, "num_attention_heads": 4, "num_key_value_heads": 4,
             "intermediate_size": 640},
    "small": {"hidden_size": 384, "num_hidden_layers": 8, "num_attention_heads": 6, "num_key_value_heads": 6,
              "intermediate_size": 1280},
}
_COMMON: dict[str, Any] = {
    "head_dim": HEAD_DIM,
    "max_position_embeddings": 1024,
    "tie_word_embeddings": False,
    "rms_norm_eps": 1e-5,
    "rope_parameters": {"rope_type": "default", "rope_theta": 10000.0},
    "hidden_act": "silu",
}


def _initializer_range(hidden_size: int) -> float:
    # Fan-in scaled init (1/sqrt(d)) instead of Llama's 0.02: with 0.02 the query/key products of a model this
    # narrow start near zero and the copy/reverse circuits take far longer to form (measured: ~2x the steps).
    return float(hidden_size) ** -0.5


def tiny_config(size: str, tokenizer: PreTrainedTokenizerBase) -> LlamaConfig:
    """The ``LlamaConfig`` for ``size`` ("tiny" or "small") sized to ``tokenizer``'s vocabulary."""
    if size not in MODEL_SIZES:
        raise ValueError(f"unknown model size {size!r}; expected one of {sorted(MODEL_SIZES)}")
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        initializer_range=_initializer_range(MODEL_SIZES[size]["hidden_size"]),
        **_COMMON,
        **MODEL_SIZES[size],
    )
    # Set after construction: LlamaConfig's typed signature does not list it, but from_pretrained and the
    # model honour it (vLLM ignores it and uses its own kernels).
    config._attn_implementation = "sdpa"
    return config


def build_tiny_model(size: str, tokenizer: PreTrainedTokenizerBase, seed: int) -> LlamaForCausalLM:
    """A freshly initialised Llama model of ``size``; the same seed gives identical weights.

    The global torch RNG is left untouched (initialisation runs under a forked RNG).
    """
    config = tiny_config(size, tokenizer)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = LlamaForCausalLM(config)
    model.generation_config = _generation_config(tokenizer)
    return model


def _generation_config(tokenizer: PreTrainedTokenizerBase) -> GenerationConfig:
    return GenerationConfig(
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )


def count_parameters(model: torch.nn.Module) -> int:
    """Total number of parameters of ``model``."""
    return sum(p.numel() for p in model.parameters())


def save_model_dir(model: LlamaForCausalLM, tokenizer: PreTrainedTokenizerBase, path: str | Path) -> Path:
    """Save ``model`` and ``tokenizer`` as a normal HF directory (safetensors, config, generation config).

    The directory loads with ``AutoModelForCausalLM.from_pretrained`` / ``AutoTokenizer.from_pretrained`` and
    with vLLM.
    """
    directory = Path(path)
    directory.mkdir(parents=True, exist_ok=True)
    model.generation_config = _generation_config(tokenizer)
    model.save_pretrained(str(directory))  # safetensors is the only format in transformers 5
    tokenizer.save_pretrained(str(directory))
    return directory
