"""``ranker=reward_model``: any ``AutoModelForSequenceClassification`` reward model, one score per response.

``encoding="training"`` (the default) gives the model exactly the ids reward-model training gives it
(:mod:`alignment.train.reward` on ``alignment.data.tokenize`` pairs): the prompt rendered with the chat template
and its generation prompt (the plain ``User: ...`` fallback without a template), then the response ids and one
EOS; an input longer than ``max_tokens`` is cut as training cuts it (oldest prompt tokens first, then the end of
the response) and counted as truncated. ``encoding="chat_template"`` renders the whole conversation with the
response as the final assistant turn (the format of reward models trained that way, e.g. on the Hub) and keeps
the first ``max_tokens`` tokens.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from alignment.data.rows import SFTRow
from alignment.data.tokenize import tokenize_sft
from alignment.ranking.base import CandidateGroup, GroupScores, Ranker
from alignment.ranking.pairrm import DTYPES, default_device

ENCODINGS = ("training", "chat_template")


class RewardModelRanker(Ranker):
    """Scores ``(prompt, response)`` with the model's first output logit, ``batch_size`` at a time."""

    name = "reward_model"
    order_invariant = True

    def __init__(self, name_or_path: str, batch_size: int = 16, device: str | None = None, dtype: str = "float32",
                 max_tokens: int = 2048, encoding: str = "training"):
        super().__init__()
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        if encoding not in ENCODINGS:
            raise ValueError(f"encoding={encoding!r}; expected one of {', '.join(ENCODINGS)}")
        self.path, self.batch_size, self.max_tokens, self.encoding = name_or_path, batch_size, max_tokens, encoding
        self.dtype = dtype
        self.device = default_device(device)
        self.tokenizer = AutoTokenizer.from_pretrained(name_or_path)
        model = AutoModelForSequenceClassification.from_pretrained(name_or_path, dtype=DTYPES[dtype],
                                                                   use_safetensors=True)
        self.model = model.to(self.device).eval()

    def describe(self) -> dict[str, Any]:
        truncation = ("oldest prompt tokens first, then the end of the response" if self.encoding == "training"
                      else "the first max_tokens tokens are kept")
        return {"ranker": self.name, "model": self.path, "device": self.device, "dtype": self.dtype,
                "max_tokens": self.max_tokens, "encoding": self.encoding, "truncation": truncation,
                "chat_template": bool(getattr(self.tokenizer, "chat_template", None))}

    def encode(self, messages: Sequence[dict[str, str]], prompt: str, response: str) -> list[int]:
        """Token ids of ``response`` to the conversation ``messages`` (``prompt`` as a user turn when there are
        no messages), in this ranker's encoding, cut to ``max_tokens``."""
        if self.encoding == "training":
            return self._training_ids(messages, prompt, response)
        if getattr(self.tokenizer, "chat_template", None):
            conversation = [dict(m) for m in messages] + [{"role": "assistant", "content": response}]
            encoded: Any = self.tokenizer.apply_chat_template(conversation, tokenize=True)
            ids = list(encoded["input_ids"] if hasattr(encoded, "keys") else encoded)
        else:
            ids = list(self.tokenizer.encode(f"{prompt}\n\n{response}"))
        if len(ids) > self.max_tokens:
            self.counts["truncated_inputs"] += 1
            ids = ids[:self.max_tokens]
        return [int(i) for i in ids]

    def _training_ids(self, messages: Sequence[dict[str, str]], prompt: str, response: str) -> list[int]:
        """Prompt ids + response ids + EOS exactly as ``alignment.data.tokenize`` builds a training sequence."""
        conversation = tuple(dict(m) for m in messages) or ({"role": "user", "content": prompt},)
        tokenized = tokenize_sft(self.tokenizer, SFTRow(id="", messages=conversation, response=response),
                                 max_length=self.max_tokens)
        if tokenized is None:  # unreachable for max_tokens >= 2: the prompt is cut first
            raise ValueError(f"max_tokens={self.max_tokens} leaves no room for the response")
        self.counts["truncated_inputs"] += int(tokenized.truncated)
        return list(tokenized.input_ids)

    @torch.inference_mode()
    def score_ids(self, rows: Sequence[Sequence[int]]) -> list[float]:
        """Reward of each encoded input, right-padded with the model's pad id (its head reads each row's last
        token that is not the pad id)."""
        pad = getattr(self.model.config, "pad_token_id", None)
        pad = pad if pad is not None else self.tokenizer.pad_token_id
        pad = pad if pad is not None else 0
        width = max(len(row) for row in rows)
        ids = torch.full((len(rows), width), pad, dtype=torch.long)
        mask = torch.zeros_like(ids)
        for index, row in enumerate(rows):
            ids[index, :len(row)] = torch.tensor(row)
            mask[index, :len(row)] = 1
        logits = self.model(input_ids=ids.to(self.device), attention_mask=mask.to(self.device)).logits
        self.counts["scored"] += len(rows)
        return [float(x) for x in logits[:, 0].float().cpu()]

    def score_groups(self, groups: Sequence[CandidateGroup]) -> list[GroupScores]:
        flat = [self.encode(g.messages, g.prompt, r) for g in groups for r in g.responses]
        scores: list[float] = []
        for start in range(0, len(flat), self.batch_size):
            scores += self.score_ids(flat[start:start + self.batch_size])
        out, at = [], 0
        for group in groups:
            out.append(GroupScores(scores=list(scores[at:at + len(group.responses)])))
            at += len(group.responses)
        return out
