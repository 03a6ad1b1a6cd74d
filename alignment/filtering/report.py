"""Pictures of a selection: the histogram of selector weights, split by noise label when there is one."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from alignment.evaluation.plots import save_figure  # noqa: E402


def plot_weight_histogram(weights: Sequence[float], path: str | Path, corrupted: Sequence[bool] | None = None,
                          threshold: float | None = None, title: str = "") -> Path:
    """Histogram of ``weights``; clean (green) vs corrupted (red) rows when ``corrupted`` labels are given,
    and the keep cut-off as a dashed line when ``threshold`` is given."""
    figure, axes = plt.subplots(figsize=(6.5, 4))
    bins = 40
    if corrupted is None:
        axes.hist(list(weights), bins=bins, color="tab:blue", alpha=0.8, label="all rows")
    else:
        clean = [w for w, c in zip(weights, corrupted, strict=True) if not c]
        noisy = [w for w, c in zip(weights, corrupted, strict=True) if c]
        low, high = min(weights), max(weights)
        edges = [low + (high - low) * i / bins for i in range(bins + 1)] if high > low else bins
        axes.hist(clean, bins=edges, color="tab:green", alpha=0.6, label=f"clean ({len(clean)})")
        axes.hist(noisy, bins=edges, color="tab:red", alpha=0.6, label=f"corrupted ({len(noisy)})")
    if threshold is not None:
        axes.axvline(threshold, color="black", linestyle="--", label=f"keep ≥ {threshold:.3g}")
    axes.set_xlabel("selector weight")
    axes.set_ylabel("rows")
    axes.set_title(title or "selector weights")
    axes.legend(fontsize=8)
    return save_figure(figure, path)
