"""Randomly initialised checkpoints in the formats the rankers load, for tests and benchmarks.

``build_pairrm_checkpoint`` writes a PairRM-hf style directory (DeBERTa-v2 config, safetensors, a byte-level BPE
tokenizer with ``[CLS]``/``[SEP]`` around every part and the PairRM prefix tokens). ``build_reward_checkpoint``
writes a tiny Llama sequence-classification reward model with a chat template. Scores are meaningless.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch

from alignment.ranking.pairrm_model import PREFIX_TOKENS, PairRMModel, prefix_token_ids, save_pairrm

BERT_SPECIALS = ("[PAD]", "[CLS]", "[SEP]", "[UNK]", "[MASK]")
# microsoft/deberta-v3-large dimensions (PairRM's encoder); ``layers`` may be reduced for speed/memory.
LARGE_DIMS = {"hidden_size": 1024, "num_hidden_layers": 24, "num_attention_heads": 16, "intermediate_size": 4096}
TINY_DIMS = {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 64}
SAMPLE_TEXTS = ("What is 3 + 4? The answer is 7.", "Reverse the words: red blue green.",
                "Count the letters in banana.", "Sort these numbers: 5 2 9 1.", "hello world, how are you?")


def pairrm_tokenizer(texts: Iterable[str] = SAMPLE_TEXTS, vocab_size: int = 400) -> Any:
    """A small byte-level BPE tokenizer shaped like PairRM's: ``[CLS] text [SEP]`` and the prefix tokens."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    backend = Tokenizer(models.BPE(unk_token="[UNK]"))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=[*BERT_SPECIALS, *PREFIX_TOKENS],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    backend.train_from_iterator(list(texts), trainer=trainer)
    backend.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B [SEP]",
        special_tokens=[(t, backend.token_to_id(t)) for t in ("[CLS]", "[SEP]")])
    return PreTrainedTokenizerFast(tokenizer_object=backend, cls_token="[CLS]", sep_token="[SEP]",
                                   pad_token="[PAD]", unk_token="[UNK]", mask_token="[MASK]",
                                   additional_special_tokens=list(PREFIX_TOKENS), model_max_length=2048)


def pairrm_config(vocab_size: int, pad_token_id: int, dims: dict[str, int] | None = None,
                  layers: int | None = None) -> Any:
    """A DeBERTa-v3 style config (relative attention, c2p/p2c, 256 position buckets) of ``dims``."""
    from transformers import DebertaV2Config

    settings: dict[str, Any] = dict(dims or TINY_DIMS)
    if layers is not None:
        settings["num_hidden_layers"] = layers
    settings.update(vocab_size=vocab_size, pad_token_id=pad_token_id, max_position_embeddings=512,
                    relative_attention=True, position_buckets=256, pos_att_type=["p2c", "c2p"],
                    norm_rel_ebd="layer_norm", share_att_key=True, position_biased_input=False, type_vocab_size=0,
                    max_relative_positions=-1)
    config = DebertaV2Config(**settings)
    config.n_tasks, config.drop_out = 1, 0.05
    return config


def build_pairrm_checkpoint(path: str | Path, seed: int = 0, dims: dict[str, int] | None = None,
                            layers: int | None = None) -> Path:
    """Write a random PairRM-hf style checkpoint to ``path`` (tiny unless ``dims``/``layers`` say otherwise)."""
    tokenizer = pairrm_tokenizer()
    torch.manual_seed(seed)
    config = pairrm_config(len(tokenizer), int(tokenizer.pad_token_id), dims, layers)
    model = PairRMModel(config, prefix_token_ids(tokenizer))
    return save_pairrm(model, tokenizer, path)


def build_reward_checkpoint(path: str | Path, seed: int = 0, hidden_size: int = 32, layers: int = 2) -> Path:
    """Write a random ``LlamaForSequenceClassification`` reward model (one label) with a chat template."""
    from transformers import LlamaConfig, LlamaForSequenceClassification

    from alignment.world.tokenizer import train_tokenizer

    tokenizer = train_tokenizer(SAMPLE_TEXTS * 4, vocab_size=300)
    settings: dict[str, Any] = {
        "vocab_size": len(tokenizer), "hidden_size": hidden_size, "intermediate_size": 2 * hidden_size,
        "num_hidden_layers": layers, "num_attention_heads": 2, "num_key_value_heads": 2,
        "max_position_embeddings": 1024, "num_labels": 1, "pad_token_id": tokenizer.pad_token_id,
        "bos_token_id": tokenizer.bos_token_id, "eos_token_id": tokenizer.eos_token_id}
    config = LlamaConfig(**settings)
    torch.manual_seed(seed)
    model = LlamaForSequenceClassification(config)
    directory = Path(path)
    model.save_pretrained(str(directory))
    tokenizer.save_pretrained(str(directory))
    return directory
