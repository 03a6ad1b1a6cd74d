"""Turning selector weights into a kept subset, and scoring a selection against noise labels."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

KEEP_RULES = ("top_p", "threshold")


def keep_mask(weights: Sequence[float], rule: str, fraction: float = 0.7, threshold: float = 1.0) -> list[bool]:
    """Which rows to keep.

    ``top_p``: the ``ceil(fraction·N)`` largest weights (ties: the earlier row first, so the result is
    deterministic); ``threshold``: every row with ``weight >= threshold``.
    """
    if rule == "top_p":
        if not 0.0 < fraction <= 1.0:
            raise ValueError(f"keep fraction {fraction} must be in (0, 1]")
        count = math.ceil(fraction * len(weights) - 1e-9)  # 0.7·10 is 7.000000000000001 in floating point
        order = sorted(range(len(weights)), key=lambda i: (-weights[i], i))
        chosen = set(order[:count])
        return [i in chosen for i in range(len(weights))]
    if rule == "threshold":
        return [w >= threshold for w in weights]
    raise ValueError(f"keep rule {rule!r} is not one of {list(KEEP_RULES)}")


def auroc(scores: Sequence[float], positive: Sequence[bool]) -> float:
    """Area under the ROC curve of ``scores`` for ``positive`` labels (Mann-Whitney U, ties count one half).

    = P(score of a random positive > score of a random negative) + ½·P(tie). Needs both classes.
    """
    if len(scores) != len(positive):
        raise ValueError(f"{len(scores)} scores but {len(positive)} labels")
    n_pos = sum(bool(p) for p in positive)
    n_neg = len(positive) - n_pos
    if n_pos == 0 or n_neg == 0:
        raise ValueError("AUROC needs at least one positive and one negative row")
    ranks = _average_ranks(scores)
    rank_sum = sum(rank for rank, p in zip(ranks, positive, strict=True) if p)
    return (rank_sum - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg)


def _average_ranks(values: Sequence[float]) -> list[float]:
    """1-based ranks, tied values sharing their average rank."""
    order = sorted(range(len(values)), key=lambda i: values[i])
    ranks = [0.0] * len(values)
    start = 0
    while start < len(order):
        end = start
        while end + 1 < len(order) and values[order[end + 1]] == values[order[start]]:
            end += 1
        for k in range(start, end + 1):
            ranks[order[k]] = (start + end) / 2 + 1
        start = end + 1
    return ranks


@dataclass(frozen=True)
class SelectionQuality:
    """How a selection relates to noise labels: AUROC of the weights (clean = positive) and kept-row
    precision (share of kept rows that are clean) / recall (share of clean rows kept)."""

    auroc: float
    precision: float
    recall: float
    kept: int
    clean: int

    def to_dict(self, prefix: str = "") -> dict[str, float]:
        return {f"{prefix}{k}": float(v) for k, v in vars(self).items()}


def selection_quality(weights: Sequence[float], kept: Sequence[bool], corrupted: Sequence[bool]) -> SelectionQuality:
    """:class:`SelectionQuality` of per-row ``weights``, ``kept`` flags and ``corrupted`` labels."""
    clean = [not c for c in corrupted]
    kept_clean = sum(k and c for k, c in zip(kept, clean, strict=True))
    n_kept, n_clean = sum(kept), sum(clean)
    return SelectionQuality(
        auroc=auroc(weights, clean),
        precision=kept_clean / n_kept if n_kept else 0.0,
        recall=kept_clean / n_clean if n_clean else 0.0,
        kept=n_kept,
        clean=n_clean,
    )


def auroc_by_kind(weights: Sequence[float], corrupted: Sequence[bool],
                  kinds: Sequence[str | None]) -> dict[str, float]:
    """AUROC of clean rows against the corrupted rows of each noise kind (``kinds[i]`` for corrupted row i).

    E.g. ``{"mismatch": 0.99, "near_miss": 0.45}`` for a pool with two kinds of noise; kinds with no row are
    absent, and corrupted rows without a kind are counted under ``"unknown"``.
    """
    clean = [w for w, c in zip(weights, corrupted, strict=True) if not c]
    by_kind: dict[str, list[float]] = {}
    for weight, is_corrupted, kind in zip(weights, corrupted, kinds, strict=True):
        if is_corrupted:
            by_kind.setdefault(kind or "unknown", []).append(weight)
    if not clean:
        return {}
    return {kind: auroc(clean + noisy, [True] * len(clean) + [False] * len(noisy))
            for kind, noisy in sorted(by_kind.items())}


def noise_labels(metas: Sequence[Mapping[str, object]], field: str = "corrupted") -> list[bool] | None:
    """``meta[field]`` of every row as bools, or None unless every row has a boolean label."""
    labels = [meta.get(field) for meta in metas]
    if not labels or not all(isinstance(label, bool) for label in labels):
        return None
    return [bool(label) for label in labels]
