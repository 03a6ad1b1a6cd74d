"""Plots a person would rather look at than read: loss-space trajectories and simple bar/line charts."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def plot_loss_space(trajectories: Mapping[str, Sequence[Mapping[str, float]]], path: str | Path,
                    ideal: tuple[float | None, float | None] = (None, None), title: str = "") -> Path:
    """Held-out SFT loss (x) vs preference loss (y) along training, one line per method; the ideal point
    (f*_SFT, f*_pref) as a star when known. Each trajectory is a list of eval records with ``eval/sft_loss``
    and ``eval/pref_loss``; the last point is marked."""
    figure, axes = plt.subplots(figsize=(6.5, 5))
    for label, records in trajectories.items():
        points = [(r["eval/sft_loss"], r["eval/pref_loss"]) for r in records
                  if "eval/sft_loss" in r and "eval/pref_loss" in r]
        if not points:
            continue
        xs, ys = zip(*points, strict=True)
        (line,) = axes.plot(xs, ys, marker=".", alpha=0.8, label=label)
        axes.scatter([xs[-1]], [ys[-1]], color=line.get_color(), s=60, edgecolor="black", zorder=3)
    if ideal[0] is not None and ideal[1] is not None:
        axes.scatter([ideal[0]], [ideal[1]], marker="*", s=200, color="gold", edgecolor="black", zorder=4,
                     label="ideal (f*_SFT, f*_pref)")
    axes.set_xlabel("held-out SFT loss")
    axes.set_ylabel("held-out preference loss")
    axes.set_title(title or "loss space (lower-left is better)")
    axes.grid(alpha=0.3)
    axes.legend(fontsize=7)
    figure.tight_layout()
    path = Path(path)
    figure.savefig(path, dpi=120)
    plt.close(figure)
    return path
