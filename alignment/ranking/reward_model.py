"""``ranker=reward_model``: any ``AutoModelForSequenceClassification`` reward model, one score per response.

The conversation plus the response is formatted with the tokenizer's chat template when it has one (the
response as the final assistant turn), else as ``prompt + "\\n\\n" + response``. Inputs longer than
``max_tokens`` keep their first tokens and are counted as truncated.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from alignment.ranking.base import CandidateGroup, GroupScores, Ranker
from alignment.ranking.pairrm import DTYPES, default_device


class RewardModelRanker(Ranker):
    """Scores ``(prompt, response)`` with the model's first output logit, ``batch_size`` at a time."""

    name = "reward_model"

    def __init__(self, name_or_path: str, batch_size: int = 16, device: str | None = None, dtype: str = "float32",
                 max_tokens: int = 2048):
        super().__init__()
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        self.path, self.batch_size, self.max_tokens = name_or_path, batch_size, max_tokens
        self.device = default_device(device)
        self.tokenizer = AutoTokenizer.from_pretrained(name_or_path)
        model = AutoModelForSequenceClassification.from_pretrained(name_or_path, dtype=DTYPES[dtype],
                                                                   use_safetensors=True)
        self.model = model.to(self.device).eval()

    def describe(self) -> dict[str, Any]:
        return {"ranker": self.name, "model": self.path, "device": self.device, "max_tokens": self.max_tokens,
                "chat_template": bool(getattr(self.tokenizer, "chat_template", None))}

    def encode(self, messages: Sequence[dict[str, str]], prompt: str, response: str) -> list[int]:
        """Token ids of the conversation ending with ``response`` (cut to ``max_tokens``)."""
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

    @torch.inference_mode()
    def score_ids(self, rows: Sequence[Sequence[int]]) -> list[float]:
        """Reward of each encoded input (right-padded; the model finds the last real token from the mask)."""
        pad = self.tokenizer.pad_token_id
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
