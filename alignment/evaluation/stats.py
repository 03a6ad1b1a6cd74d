"""Uncertainty of evaluation numbers: seeded percentile-bootstrap confidence intervals of a mean."""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

DEFAULT_RESAMPLES = 1000


@dataclass(frozen=True)
class Estimate:
    """A mean over ``n`` per-example values with its bootstrap confidence interval ``[low, high]``."""

    value: float
    low: float
    high: float
    n: int
    confidence: float = 0.95

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON form: ``{value, ci_low, ci_high, n, confidence}``."""
        return {"value": self.value, "ci_low": self.low, "ci_high": self.high, "n": self.n,
                "confidence": self.confidence}


def _percentile(sorted_values: Sequence[float], q: float) -> float:
    """Linear-interpolated ``q``-quantile (0..1) of already sorted values."""
    position = q * (len(sorted_values) - 1)
    below = int(position)
    above = min(below + 1, len(sorted_values) - 1)
    fraction = position - below
    return sorted_values[below] * (1 - fraction) + sorted_values[above] * fraction


def bootstrap_ci(values: Sequence[float], resamples: int = DEFAULT_RESAMPLES, seed: int = 0,
                 confidence: float = 0.95) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean of ``values`` (resampled with replacement, seeded).

    One value gives a zero-width interval at it; no values is an error (there is nothing to estimate).
    """
    if not values:
        raise ValueError("bootstrap_ci needs at least one value")
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be in (0, 1) (got {confidence})")
    if resamples < 1:
        raise ValueError(f"resamples must be >= 1 (got {resamples})")
    rng = random.Random(seed)
    n = len(values)
    means = sorted(sum(values[rng.randrange(n)] for _ in range(n)) / n for _ in range(resamples))
    tail = (1.0 - confidence) / 2.0
    return _percentile(means, tail), _percentile(means, 1.0 - tail)


def estimate(values: Sequence[float], resamples: int = DEFAULT_RESAMPLES, seed: int = 0,
             confidence: float = 0.95) -> Estimate:
    """The mean of ``values`` and its seeded bootstrap interval."""
    low, high = bootstrap_ci(values, resamples, seed, confidence)
    return Estimate(value=sum(values) / len(values), low=low, high=high, n=len(values), confidence=confidence)
