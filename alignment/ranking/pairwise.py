"""Turning pairwise comparisons into win probabilities: both presentation orders, shuffled candidate order.

A pairwise model gives a logit for "the first candidate is better than the second". Models have a position
bias, so every unordered pair ``{i, j}`` is compared as ``(i, j)`` and ``(j, i)`` and the two probabilities are
averaged: ``P(i > j) = (sigmoid(l(i, j)) + 1 - sigmoid(l(j, i))) / 2``, which makes ``P(i > j) + P(j > i) = 1``.
Candidates are shuffled (seeded by the group key) before pairs are formed so no candidate is systematically
first within a batch.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Sequence

from alignment.generation.base import request_seed

Comparison = tuple[int, int, int]  # (group index, first candidate, second candidate)


def ordered_pairs(n: int, key: str, seed: int = 0) -> list[tuple[int, int]]:
    """Every ordered pair ``(i, j)``, ``i != j``, of ``n`` candidates, in an order shuffled by ``key``/``seed``."""
    order = list(range(n))
    random.Random(request_seed(seed, key)).shuffle(order)
    return [(order[a], order[b]) for a in range(n) for b in range(n) if a != b]


def sigmoid(x: float) -> float:
    """The logistic function, stable for large ``|x|``."""
    if x >= 0:
        return 1.0 / (1.0 + math.exp(-x))
    z = math.exp(x)
    return z / (1.0 + z)


def win_probs_from_logits(n: int, logits: dict[tuple[int, int], float]) -> list[list[float]]:
    """``[n, n]`` win probabilities from logits of every ordered pair (``logits[(i, j)]``: i better than j).

    The diagonal is 0.5. Both orders are averaged, so the matrix satisfies ``P[i][j] + P[j][i] = 1``.
    """
    probs = [[0.5] * n for _ in range(n)]
    for i in range(n):
        for j in range(i + 1, n):
            p = (sigmoid(logits[(i, j)]) + 1.0 - sigmoid(logits[(j, i)])) / 2.0
            probs[i][j], probs[j][i] = p, 1.0 - p
    return probs


def compare_all(sizes: Sequence[int], keys: Sequence[str], compare: Callable[[list[Comparison]], list[float]],
                batch_size: int, seed: int = 0) -> list[list[list[float]]]:
    """Win-probability matrices of several groups, comparing in batches of ``batch_size`` ordered pairs.

    ``sizes[g]``: candidates in group ``g``; ``compare(batch)`` returns one logit per ``(g, i, j)``.
    """
    work: list[Comparison] = [(g, i, j) for g, (n, key) in enumerate(zip(sizes, keys, strict=True))
                              for i, j in ordered_pairs(n, key, seed)]
    logits: list[dict[tuple[int, int], float]] = [{} for _ in sizes]
    for start in range(0, len(work), batch_size):
        batch = work[start:start + batch_size]
        for (g, i, j), logit in zip(batch, compare(batch), strict=True):
            logits[g][(i, j)] = logit
    return [win_probs_from_logits(n, logits[g]) for g, n in enumerate(sizes)]
