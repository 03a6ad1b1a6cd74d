"""Plots a person would rather look at than read: loss-space trajectories and simple bar/line charts."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def save_figure(figure: Any, path: str | Path) -> Path:
    """Lay out, write as PNG and close ``figure``; returns the path written."""
    figure.tight_layout()
    path = Path(path)
    figure.savefig(path, dpi=120)
    plt.close(figure)
    return path


def plot_loss_space(trajectories: Mapping[str, Sequence[Mapping[str, float]]], path: str | Path,
                    ideal: tuple[float | None, float | None] = (None, None), title: str = "",
                    styles: Mapping[str, Mapping[str, Any]] | None = None) -> Path:
    """Held-out SFT loss (x) vs preference loss (y) along training, one line per method; the ideal point
    (f*_SFT, f*_pref) as a star when known. Each trajectory is a list of eval records with ``eval/sft_loss``
    and ``eval/pref_loss``; the last point is marked. ``styles`` gives a label's matplotlib line keywords
    (e.g. one colour per method and one marker per λ); unstyled labels take the palette in order."""
    many = len(trajectories) > 8  # a long legend goes beside the axes, where it hides no point
    figure, axes = plt.subplots(figsize=(9.0 if many else 6.5, 5))
    palette = plt.get_cmap("tab20" if len(trajectories) > 10 else "tab10")
    for index, (label, records) in enumerate(trajectories.items()):
        points = [(r["eval/sft_loss"], r["eval/pref_loss"]) for r in records
                  if "eval/sft_loss" in r and "eval/pref_loss" in r]
        if not points:
            continue
        style = {"color": palette(index % palette.N), "marker": "o", **(styles or {}).get(label, {})}
        xs, ys = zip(*points, strict=True)
        axes.plot(xs, ys, alpha=0.6, color=style["color"], marker=".", ms=3, ls=style.get("ls", "-"))
        axes.plot(xs[-1:], ys[-1:], ls="none", label=label, color=style["color"], marker=style["marker"], ms=8,
                  mec="black", zorder=3)  # the final point, whose marker (e.g. λ) the legend shows
    if ideal[0] is not None and ideal[1] is not None:
        axes.scatter([ideal[0]], [ideal[1]], marker="*", s=200, color="gold", edgecolor="black", zorder=4,
                     label="ideal (f*_SFT, f*_pref)")
    axes.set_xlabel("held-out SFT loss")
    axes.set_ylabel("held-out preference loss")
    axes.set_title(title or "loss space (lower-left is better)")
    axes.grid(alpha=0.3)
    if many:
        axes.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.02, 1.0))
    else:
        axes.legend(fontsize=7)
    return save_figure(figure, path)


def plot_estimates(estimates: Mapping[str, Mapping[str, float]], path: str | Path, ylabel: str,
                   title: str = "", reference_line: float | None = None) -> Path:
    """One bar per model with its confidence interval as an error bar; ``estimates`` maps a model to an
    estimate dict (``value``, ``ci_low``, ``ci_high``)."""
    names = list(estimates)
    values = [estimates[n]["value"] for n in names]
    lower = [max(0.0, estimates[n]["value"] - estimates[n]["ci_low"]) for n in names]
    upper = [max(0.0, estimates[n]["ci_high"] - estimates[n]["value"]) for n in names]
    figure, axes = plt.subplots(figsize=(max(4.0, 1.2 * len(names) + 2), 4))
    axes.bar(range(len(names)), values, yerr=[lower, upper], capsize=6, color="tab:blue", alpha=0.8)
    if reference_line is not None:
        axes.axhline(reference_line, color="grey", linestyle="--", linewidth=1)
    axes.set_xticks(range(len(names)), names, rotation=20, ha="right", fontsize=8)
    axes.set_ylabel(ylabel)
    axes.set_title(title or ylabel)
    axes.grid(axis="y", alpha=0.3)
    return save_figure(figure, path)


def plot_length_distribution(lengths: Mapping[str, Sequence[int]], path: str | Path,
                             title: str = "output length") -> Path:
    """Overlaid histograms of output lengths (characters), one per model."""
    figure, axes = plt.subplots(figsize=(6.5, 4))
    for name, values in lengths.items():
        if values:
            axes.hist(list(values), bins=20, alpha=0.5, label=name)
    axes.set_xlabel("output length (characters)")
    axes.set_ylabel("outputs")
    axes.set_title(title)
    axes.legend(fontsize=7)
    return save_figure(figure, path)


def plot_series_with_intervals(series: Mapping[str, Sequence[tuple[str, float, float | None, float | None]]],
                               path: str | Path, ylabel: str, xlabel: str = "after round", title: str = "",
                               reference_line: float | None = None) -> Path:
    """One line per series over shared x labels; each point is ``(x label, value, low, high)`` and its interval
    [low, high] is drawn as an error bar (None: no bar). Series are offset slightly so their bars do not hide
    each other."""
    figure, axes = plt.subplots(figsize=(6.0, 4.0))
    labels = list(dict.fromkeys(x for points in series.values() for x, *_ in points))
    width = 0.08 * (len(series) - 1)
    for index, (name, points) in enumerate(series.items()):
        offset = index * 0.08 - width / 2
        xs = [labels.index(x) + offset for x, *_ in points]
        values = [value for _, value, _, _ in points]
        lower = [value - low if low is not None else 0.0 for _, value, low, _ in points]
        upper = [high - value if high is not None else 0.0 for _, value, _, high in points]
        axes.errorbar(xs, values, yerr=[lower, upper], marker="o", capsize=5, label=name)
    if reference_line is not None:
        axes.axhline(reference_line, color="grey", linestyle="--", linewidth=1)
    axes.set_xticks(range(len(labels)), labels)
    axes.set_xlabel(xlabel)
    axes.set_ylabel(ylabel)
    axes.set_title(title or ylabel)
    axes.grid(alpha=0.3)
    if len(series) > 1:
        axes.legend(fontsize=8)
    return save_figure(figure, path)


def plot_stacked_bars(labels: Sequence[str], parts: Mapping[str, Sequence[float]], path: str | Path,
                      ylabel: str, xlabel: str = "round", title: str = "") -> Path:
    """One bar per label, stacked from ``parts`` (``{part: one value per label}``) in order, e.g. the seconds
    each stage of a round took."""
    figure, axes = plt.subplots(figsize=(6.5, 4.0))
    bottom = [0.0] * len(labels)
    for name, values in parts.items():
        axes.bar(range(len(labels)), values, bottom=bottom, label=name)
        bottom = [b + v for b, v in zip(bottom, values, strict=True)]
    axes.set_xticks(range(len(labels)), labels)
    axes.set_xlabel(xlabel)
    axes.set_ylabel(ylabel)
    axes.set_title(title or ylabel)
    axes.grid(axis="y", alpha=0.3)
    axes.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.02, 1.0))
    return save_figure(figure, path)
