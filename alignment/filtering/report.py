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


def plot_weights_by_kind(weights_by_kind: dict[str, Sequence[float]], path: str | Path, title: str = "") -> Path:
    """One box of selector weights per label (``clean`` and each noise kind), with the row count in the label."""
    kinds = [kind for kind, values in weights_by_kind.items() if values]
    figure, axes = plt.subplots(figsize=(7, 4))
    axes.boxplot([list(weights_by_kind[k]) for k in kinds], showfliers=False)
    axes.set_xticks(range(1, len(kinds) + 1), [f"{k}\n({len(weights_by_kind[k])})" for k in kinds], fontsize=8)
    axes.set_ylabel("selector weight")
    axes.set_title(title or "selector weights by noise kind")
    axes.grid(axis="y", alpha=0.3)
    return save_figure(figure, path)
