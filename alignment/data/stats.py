"""Small summaries of token or character lengths, for tokenization stats and dry-run reports."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def length_summary(lengths: Sequence[int]) -> dict[str, float]:
    """``{"min", "mean", "p50", "p95", "max"}`` of ``lengths`` (linear-interpolated percentiles; zeros if empty)."""
    if len(lengths) == 0:
        return {"min": 0.0, "mean": 0.0, "p50": 0.0, "p95": 0.0, "max": 0.0}
    values = np.asarray(lengths, dtype=np.float64)
    return {
        "min": float(values.min()),
        "mean": float(values.mean()),
        "p50": float(np.percentile(values, 50)),
        "p95": float(np.percentile(values, 95)),
        "max": float(values.max()),
    }
