"""Choosing (chosen, rejected) pairs from scored candidates.

Rules (``pair_rule``): ``best_vs_worst``; ``best_vs_random`` (the best against a random other candidate, seeded
by the group key); ``all_pairs`` (every pair, the higher-scored one chosen); ``length_penalised`` (best vs
worst on ``score - alpha * length``). Only candidates with a score and a non-blank text take part. A pair whose
(rule) scores are equal, or whose texts are identical, is a tie and is dropped; a pair whose margin is below
``min_margin`` is dropped too. Both are counted.
"""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

from alignment.generation.base import request_seed

PAIR_RULES = ("best_vs_worst", "best_vs_random", "all_pairs", "length_penalised")
TIE_EPS = 1e-9


@dataclass(frozen=True)
class SelectedPair:
    """Indices into the group's candidates and the rule's score difference (``margin`` > 0)."""

    chosen: int
    rejected: int
    margin: float


def rule_scores(scores: Sequence[float | None], lengths: Sequence[int], rule: str,
                alpha: float) -> list[float | None]:
    """The scores the rule compares: ``score - alpha * length`` for ``length_penalised``, else ``scores``."""
    if rule != "length_penalised":
        return list(scores)
    return [None if s is None else s - alpha * length for s, length in zip(scores, lengths, strict=True)]


def candidate_pairs(values: Sequence[float], eligible: Sequence[int], rule: str, key: str,
                    seed: int) -> list[tuple[int, int]]:
    """The unordered pairs a rule considers among ``eligible`` indices (before tie/margin checks)."""
    if len(eligible) < 2:
        return []
    if rule == "all_pairs":
        return [(a, b) for n, a in enumerate(eligible) for b in eligible[n + 1:]]
    best = max(eligible, key=lambda i: values[i])  # the first of equal maxima: stable
    if rule == "best_vs_random":
        others = [i for i in eligible if i != best]
        return [(best, random.Random(request_seed(seed, key)).choice(others))]
    return [(best, min(eligible, key=lambda i: values[i]))]


def select_pairs(texts: Sequence[str], scores: Sequence[float | None], rule: str, min_margin: float = 0.0,
                 lengths: Sequence[int] | None = None, alpha: float = 0.0, key: str = "",
                 seed: int = 0) -> tuple[list[SelectedPair], Counter[str]]:
    """Pairs of one group under ``rule`` and counts: ``candidate_pairs``, ``ties``, ``below_min_margin``,
    ``unscored_candidates``, ``empty_candidates``, ``groups_without_pair``."""
    if rule not in PAIR_RULES:
        raise ValueError(f"pair_rule={rule!r}; expected one of {', '.join(PAIR_RULES)}")
    counts: Counter[str] = Counter()
    lengths = list(lengths) if lengths is not None else [len(t) for t in texts]
    values = rule_scores(scores, lengths, rule, alpha)
    counts["unscored_candidates"] = sum(v is None for v in values)
    counts["empty_candidates"] = sum(v is not None and not t.strip() for v, t in zip(values, texts, strict=True))
    eligible = [i for i, (v, t) in enumerate(zip(values, texts, strict=True)) if v is not None and t.strip()]
    numeric = [v if v is not None else 0.0 for v in values]
    pairs = []
    for a, b in candidate_pairs(numeric, eligible, rule, key, seed):
        counts["candidate_pairs"] += 1
        hi, lo = (a, b) if numeric[a] >= numeric[b] else (b, a)
        margin = numeric[hi] - numeric[lo]
        if margin <= TIE_EPS or texts[hi].strip() == texts[lo].strip():
            counts["ties"] += 1
        elif margin < min_margin:
            counts["below_min_margin"] += 1
        else:
            pairs.append(SelectedPair(hi, lo, margin))
    counts["groups_without_pair"] = int(not pairs)
    return pairs, counts
