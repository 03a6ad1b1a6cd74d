"""A PairRM pairwise reward model: a DeBERTa-v2 encoder and a head comparing two candidates.

Checkpoint format of ``llm-blender/PairRM-hf`` (llm-blender's ``DebertaV2PairRM``): a DeBERTa-v2 config
(``config.json``, with ``n_tasks``, ``drop_out`` and the prefix token ids), weights in safetensors with the encoder
under ``pretrained_model.`` and the head under ``head_layer.`` (dropout, linear 2h->h, tanh, dropout, linear
h->n_tasks), and a tokenizer with the added tokens ``<|source|>``, ``<|candidate1|>``, ``<|candidate2|>``.

One input row is ``[CLS] <|source|> source [SEP] [CLS] <|candidate1|> c1 [SEP] [CLS] <|candidate2|> c2 [SEP]``
(each part encoded on its own with the tokenizer's special tokens; llm-blender's ``tokenize_pair``): the source
part is cut to ``source_max`` tokens, then each candidate part to half of what the source left of the total
``source_max + 2 * candidate_max``. The final hidden states at the three prefix tokens give ``s``, ``h1``,
``h2``; the logit that c1 is better than c2 is ``mean(head([s; h1]) - head([s; h2]))`` over the tasks.

``tests/test_pairrm_parity.py`` and ``scripts/pairrm_parity.py`` check the weight names, the encoding and the
logits against llm-blender's own code.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

SOURCE_TOKEN = "<|source|>"
CANDIDATE1_TOKEN = "<|candidate1|>"
CANDIDATE2_TOKEN = "<|candidate2|>"
CANDIDATE_TOKEN = "<|candidate|>"
PREFIX_TOKENS = (SOURCE_TOKEN, CANDIDATE1_TOKEN, CANDIDATE2_TOKEN, CANDIDATE_TOKEN)
SOURCE_MAX_TOKENS = 1224
CANDIDATE_MAX_TOKENS = 412
WEIGHTS_FILE = "model.safetensors"
DEFAULT_DROPOUT = 0.05
CONFIG_PREFIX_KEYS = ("source_prefix_id", "cand1_prefix_id", "cand2_prefix_id")


class PairRMModel(nn.Module):
    """DeBERTa-v2 encoder + pairwise head; :meth:`forward` returns one logit per row ("c1 beats c2")."""

    def __init__(self, config: Any, prefix_ids: Sequence[int]):
        super().__init__()
        from transformers import DebertaV2Model

        hidden, dropout = config.hidden_size, float(getattr(config, "drop_out", DEFAULT_DROPOUT))
        self.config = config
        self.source_id, self.cand1_id, self.cand2_id = (int(i) for i in prefix_ids)
        self.pretrained_model = DebertaV2Model(config)
        self.head_layer = nn.Sequential(nn.Dropout(dropout), nn.Linear(2 * hidden, hidden), nn.Tanh(),
                                        nn.Dropout(dropout), nn.Linear(hidden, int(getattr(config, "n_tasks", 1))))

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """``input_ids``/``attention_mask``: ``[batch, seq]`` -> logits ``[batch]``."""
        hidden = self.pretrained_model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        rows = torch.arange(input_ids.shape[0], device=input_ids.device)
        source = hidden[rows, _first_position(input_ids, self.source_id)]
        cand1 = hidden[rows, _first_position(input_ids, self.cand1_id)]
        cand2 = hidden[rows, _first_position(input_ids, self.cand2_id)]
        left = self.head_layer(torch.cat([source, cand1], dim=-1))
        right = self.head_layer(torch.cat([source, cand2], dim=-1))
        return (left - right).mean(dim=-1)


def _first_position(input_ids: torch.Tensor, token_id: int) -> torch.Tensor:
    """``[batch]`` index of the first ``token_id`` in each row of ``input_ids`` ``[batch, seq]``; each must have one."""
    hits = input_ids == token_id
    if not bool(hits.any(dim=1).all()):
        raise ValueError(f"a PairRM input row lacks the prefix token id {token_id}")
    return hits.int().argmax(dim=1)


@dataclass
class EncodedPairs:
    """Padded inputs ``[batch, seq]`` and how many sources / candidates were cut to fit."""

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    truncated_sources: int
    truncated_candidates: int


def without_prefix_tokens(text: str) -> str:
    """``text`` with any literal prefix token (``<|source|>`` ...) replaced by a space.

    The tokenizer turns such a string into the prefix token itself, and the model reads one hidden state per
    prefix token, so a text containing one would move where the model looks (llm-blender's model fails on it).
    """
    for token in PREFIX_TOKENS:
        text = text.replace(token, " ")
    return text


def _encode_part(tokenizer: Any, prefix: str, text: str, max_tokens: int) -> tuple[list[int], bool]:
    """``prefix + text`` with the tokenizer's special tokens, truncated to ``max_tokens``; and whether it was cut.

    The budget never drops below what the prefix alone needs: the model reads its hidden state.
    """
    ids = list(tokenizer.encode(prefix + without_prefix_tokens(text)))
    if len(ids) <= max_tokens:
        return ids, False
    budget = max(max_tokens, len(tokenizer.encode(prefix)))
    return list(tokenizer.encode(prefix + without_prefix_tokens(text), max_length=budget, truncation=True)), True


def encode_pairs(tokenizer: Any, sources: Sequence[str], firsts: Sequence[str], seconds: Sequence[str],
                 source_max: int = SOURCE_MAX_TOKENS, candidate_max: int = CANDIDATE_MAX_TOKENS) -> EncodedPairs:
    """Encode (source, c1, c2) triples as llm-blender's ``tokenize_pair`` does, right-padded to the longest row.

    The source part keeps at most ``source_max`` tokens; each candidate part gets half of what the source leaves
    of ``source_max + 2 * candidate_max`` (2048 for PairRM). ``tokenize_pair`` pads every row to that total and
    its model drops the all-padding columns again, so the logits are the same. Returns ``input_ids`` and
    ``attention_mask`` ``[batch, seq]`` and how many sources / candidates were cut.
    """
    total = source_max + 2 * candidate_max
    rows, cut_sources, cut_candidates = [], 0, 0
    for source, first, second in zip(sources, firsts, seconds, strict=True):
        source_ids, cut = _encode_part(tokenizer, SOURCE_TOKEN, source, source_max)
        room = (total - len(source_ids)) // 2
        first_ids, cut1 = _encode_part(tokenizer, CANDIDATE1_TOKEN, first, room)
        second_ids, cut2 = _encode_part(tokenizer, CANDIDATE2_TOKEN, second, room)
        rows.append(source_ids + first_ids + second_ids)
        cut_sources += int(cut)
        cut_candidates += int(cut1) + int(cut2)
    width = max(len(row) for row in rows)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    input_ids = torch.full((len(rows), width), pad, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for index, row in enumerate(rows):
        input_ids[index, :len(row)] = torch.tensor(row)
        mask[index, :len(row)] = 1
    return EncodedPairs(input_ids, mask, cut_sources, cut_candidates)


def prefix_token_ids(tokenizer: Any) -> list[int]:
    """Ids of ``<|source|>``, ``<|candidate1|>``, ``<|candidate2|>``; the tokenizer must know them as single tokens."""
    ids = []
    for token in PREFIX_TOKENS[:3]:
        token_id = tokenizer.convert_tokens_to_ids(token)
        if token_id is None or token_id == tokenizer.unk_token_id:
            raise ValueError(f"the PairRM tokenizer has no {token} token")
        ids.append(int(token_id))
    return ids


def checked_prefix_ids(config: Any, tokenizer: Any, where: str) -> list[int]:
    """The prefix ids the tokenizer produces, checked against the ids the checkpoint's config names (the ones
    llm-blender's model reads), when it names them."""
    ids = prefix_token_ids(tokenizer)
    named = [getattr(config, key, None) for key in CONFIG_PREFIX_KEYS]
    for key, token_id, configured in zip(CONFIG_PREFIX_KEYS, ids, named, strict=True):
        if configured is not None and int(configured) != token_id:
            raise ValueError(f"{where}: config.json has {key}={configured} but the tokenizer encodes that prefix "
                             f"as {token_id}; the tokenizer does not belong to these weights")
    return ids


def resolve_checkpoint(name_or_path: str) -> Path:
    """A local directory for ``name_or_path``: itself, or the Hub snapshot of that id (safetensors only)."""
    path = Path(name_or_path)
    if path.is_dir():
        return path
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(name_or_path, allow_patterns=["*.json", "*.safetensors", "*.model",
                                                                     "*.txt"]))
    except Exception as error:
        raise FileNotFoundError(f"{name_or_path}: not a local directory and not loadable from the Hub "
                                f"({type(error).__name__}: {error})") from error


def load_pairrm(name_or_path: str, device: str = "cpu", dtype: torch.dtype = torch.float32) -> tuple[PairRMModel, Any]:
    """``(model in eval mode, tokenizer)`` from a PairRM-hf style directory or Hub id."""
    from safetensors.torch import load_file
    from transformers import AutoTokenizer, DebertaV2Config

    directory = resolve_checkpoint(name_or_path)
    weights = directory / WEIGHTS_FILE
    if not weights.is_file():
        raise FileNotFoundError(f"{directory}: no {WEIGHTS_FILE} (PairRM weights are loaded from safetensors)")
    config = DebertaV2Config.from_pretrained(str(directory))
    tokenizer = AutoTokenizer.from_pretrained(str(directory))
    model = PairRMModel(config, checked_prefix_ids(config, tokenizer, str(directory)))
    state = load_file(str(weights))
    missing, unexpected = model.load_state_dict(state, strict=False)
    # older transformers saved the position-id buffer; it is rebuilt from the config
    missing = [key for key in missing if not key.endswith("position_ids")]
    unexpected = [key for key in unexpected if not key.endswith("position_ids")]
    if missing or unexpected:
        raise ValueError(f"{weights}: not a PairRM checkpoint (missing {missing[:5]}, unexpected {unexpected[:5]})")
    return model.to(device=device, dtype=dtype).eval(), tokenizer


def save_pairrm(model: PairRMModel, tokenizer: Any, path: str | Path) -> Path:
    """Save ``model`` and ``tokenizer`` in the PairRM-hf layout (config.json, model.safetensors, tokenizer).

    The config carries every attribute llm-blender's ``DebertaV2PairRM`` reads, so that class loads it too.
    """
    from safetensors.torch import save_file

    directory = Path(path)
    directory.mkdir(parents=True, exist_ok=True)
    config = model.config.to_dict()
    candidate_id = tokenizer.convert_tokens_to_ids(CANDIDATE_TOKEN)
    config.update(source_prefix_id=model.source_id, cand1_prefix_id=model.cand1_id, cand2_prefix_id=model.cand2_id,
                  cand_prefix_id=None if candidate_id == tokenizer.unk_token_id else candidate_id,
                  sep_token_id=tokenizer.sep_token_id, n_tasks=int(getattr(model.config, "n_tasks", 1)),
                  drop_out=float(getattr(model.config, "drop_out", DEFAULT_DROPOUT)),
                  architectures=["DebertaV2PairRM"])
    (directory / "config.json").write_text(json.dumps(config, indent=2, default=str))
    state = {key: value.contiguous() for key, value in model.state_dict().items()}
    save_file(state, str(directory / WEIGHTS_FILE))
    tokenizer.save_pretrained(str(directory))
    return directory
