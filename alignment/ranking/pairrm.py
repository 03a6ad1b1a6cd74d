"""``ranker=pairrm``: rank candidates by PairRM comparisons of every pair, in both orders."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from alignment.ranking.base import CandidateGroup, GroupScores, Ranker, scores_from_win_probs
from alignment.ranking.pairrm_model import CANDIDATE_MAX_TOKENS, SOURCE_MAX_TOKENS, encode_pairs, load_pairrm
from alignment.ranking.pairwise import Comparison, compare_all

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def default_device(device: str | None) -> str:
    """``device`` or, when ``None``, the first GPU when there is one, else the CPU."""
    if device:
        return device
    return "cuda" if torch.cuda.is_available() else "cpu"


class PairRMRanker(Ranker):
    """Scores each candidate by its mean win probability against the others (``n * (n - 1)`` comparisons).

    ``batch_size`` ordered pairs go through the model at once; ``source_max``/``candidate_max`` are the token
    limits (1224 / 412 in PairRM); truncations are counted in :meth:`counters`.
    """

    name = "pairrm"

    def __init__(self, name_or_path: str, batch_size: int = 16, device: str | None = None, dtype: str = "float32",
                 source_max: int = SOURCE_MAX_TOKENS, candidate_max: int = CANDIDATE_MAX_TOKENS, seed: int = 0):
        super().__init__()
        self.path, self.batch_size, self.seed, self.dtype = name_or_path, batch_size, seed, dtype
        self.source_max, self.candidate_max = source_max, candidate_max
        self.device = default_device(device)
        self.model, self.tokenizer = load_pairrm(name_or_path, self.device, DTYPES[dtype])

    def describe(self) -> dict[str, Any]:
        return {"ranker": self.name, "model": self.path, "device": self.device, "dtype": self.dtype,
                "source_max": self.source_max, "candidate_max": self.candidate_max, "seed": self.seed,
                "orders": "every ordered pair of candidates"}

    @torch.inference_mode()
    def compare(self, sources: Sequence[str], firsts: Sequence[str], seconds: Sequence[str]) -> list[float]:
        """Logits that ``firsts[k]`` is better than ``seconds[k]`` as an answer to ``sources[k]``."""
        encoded = encode_pairs(self.tokenizer, sources, firsts, seconds, self.source_max, self.candidate_max)
        self.counts["truncated_sources"] += encoded.truncated_sources
        self.counts["truncated_candidates"] += encoded.truncated_candidates
        self.counts["comparisons"] += len(sources)
        logits = self.model(encoded.input_ids.to(self.device), encoded.attention_mask.to(self.device))
        return [float(x) for x in logits.float().cpu()]

    def score_groups(self, groups: Sequence[CandidateGroup]) -> list[GroupScores]:
        def compare(batch: list[Comparison]) -> list[float]:
            return self.compare([groups[g].prompt for g, _, _ in batch], [groups[g].responses[i] for g, i, _ in batch],
                                [groups[g].responses[j] for g, _, j in batch])

        matrices = compare_all([len(g.responses) for g in groups], [g.key for g in groups], compare,
                               self.batch_size, self.seed)
        return [GroupScores(scores=scores_from_win_probs(m), win_probs=m) for m in matrices]
