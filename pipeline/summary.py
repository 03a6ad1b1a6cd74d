"""The per-round table of an iterative run: one row for the starting model, then one per round.

Values come from each round's ``evaluate`` manifest (its headline metrics ``<suite>/<model key>/<metric>``):
the row "base" holds round 0's ``policy`` numbers, row ``k`` the numbers of round ``k``'s trained model. The
table is written to ``{run_dir}/iterate/`` as JSON, Markdown, one plot per headline metric (its confidence
interval as error bars) and a plot of each round's seconds by stage.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from alignment.evaluation.plots import plot_series_with_intervals, plot_stacked_bars
from alignment.fileio import write_text_atomic
from pipeline.artifacts import is_complete, read_manifest
from pipeline.layout import (
    CREATE_INSTRUCTIONS,
    EVALUATE,
    FILTER,
    GENERATE,
    JOINT_TRAIN,
    RANK,
    TRAIN_RM,
    Files,
    RunLayout,
)

# evaluate's keys of the round's starting policy and of its trained model (``policy``, ``round:joint_train``)
BEFORE_KEY, AFTER_KEY = "policy", "round_joint_train"
EXTRA_COLUMNS = ("sample_score", "pairs", "train_steps")


def model_metrics(metrics: Mapping[str, Any], model_key: str) -> dict[str, float]:
    """``{"<suite>/<metric>": value}`` of one model in an evaluate manifest's metrics."""
    found = {}
    for name, value in metrics.items():
        parts = name.split("/")
        if len(parts) == 3 and parts[1] == model_key and isinstance(value, (int, float)):
            found[f"{parts[0]}/{parts[2]}"] = float(value)
    return found


def summary_rows(evaluations: Sequence[Mapping[str, Any]], extras: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Rows ``{"round": "base" | k, <suite/metric>: value, ...}`` from each round's evaluate metrics, plus that
    round's ``extras`` (e.g. pairs built, training steps)."""
    rows: list[dict[str, Any]] = []
    if evaluations:
        rows.append({"round": "base", **model_metrics(evaluations[0], BEFORE_KEY)})
    for index, (metrics, extra) in enumerate(zip(evaluations, extras, strict=True)):
        rows.append({"round": index, **extra, **model_metrics(metrics, AFTER_KEY)})
    return rows


def summary_markdown(rows: Sequence[Mapping[str, Any]], columns: Sequence[str]) -> str:
    """A Markdown table of ``rows`` restricted to ``columns`` (missing values shown as blank)."""
    def cell(value: Any) -> str:
        return f"{value:.4g}" if isinstance(value, float) else "" if value is None else str(value)

    lines = ["| round | " + " | ".join(columns) + " |", "|---" * (len(columns) + 1) + "|"]
    lines += ["| " + " | ".join([cell(row["round"])] + [cell(row.get(c)) for c in columns]) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def headline_columns(rows: Sequence[Mapping[str, Any]]) -> list[str]:
    """The evaluation metrics worth a column: overall numbers, not per-family breakdowns."""
    names = {key for row in rows for key in row if "/" in key and ".families" not in key and "families." not in key}
    return sorted(names)


INTERVAL_ENDS = (".low", ".high")  # a metric's confidence interval, drawn on the metric's own plot


def plotted_metrics(rows: Sequence[Mapping[str, Any]]) -> list[str]:
    """The headline metrics that get a plot: an interval end (``<metric>.low``) is drawn on its metric's plot."""
    columns = headline_columns(rows)
    return [c for c in columns if not any(c.endswith(end) and c[: -len(end)] in columns for end in INTERVAL_ENDS)]


def interval_points(rows: Sequence[Mapping[str, Any]], metric: str) -> list[tuple[str, float, Any, Any]]:
    """``(round, value, <metric>.low, <metric>.high)`` of each row that holds ``metric`` (an end may be None)."""
    return [(str(row["round"]), float(row[metric]), row.get(f"{metric}.low"), row.get(f"{metric}.high"))
            for row in rows if metric in row]


def plot_rounds(rows: Sequence[Mapping[str, Any]], metric: str, path: str | Path) -> Path:
    """``metric`` per round (x: base, 0, 1, ...) as a line with markers, with its confidence interval as error
    bars when the rows hold ``<metric>.low`` and ``<metric>.high``; a win rate gets the 0.5 line."""
    return plot_series_with_intervals({metric: interval_points(rows, metric)}, path, ylabel=metric,
                                      reference_line=0.5 if metric.endswith("win_rate") else None)


def plot_cost(costs: Sequence[Mapping[str, Any]], stages: Sequence[str], path: str | Path) -> Path:
    """Seconds per round, stacked by stage (a stage without a recorded time counts as 0)."""
    parts = {stage: [float(row.get(f"{stage}_s") or 0.0) for row in costs] for stage in stages}
    return plot_stacked_bars([str(row["round"]) for row in costs], parts, path, ylabel="seconds",
                             title="where a round's time goes")


def round_extras(layout: RunLayout, round_index: int, stages: Sequence[str]) -> dict[str, Any]:
    """The policy's samples of a round (their mean score and the pairs built) and its training steps."""
    extras: dict[str, Any] = {}
    if RANK in stages:
        ranked = read_manifest(layout.stage_dir(round_index, RANK))["metrics"]
        extras.update(sample_score=ranked.get("mean_score"), pairs=ranked.get("pairs"))
    if JOINT_TRAIN in stages:
        extras["train_steps"] = read_manifest(layout.stage_dir(round_index, JOINT_TRAIN))["metrics"].get("steps")
    return extras


# where a round's time goes: what a GPU would change is mostly the generation and training shares
COST_GROUPS = {CREATE_INSTRUCTIONS: "generation", GENERATE: "generation", RANK: "ranking", FILTER: "training",
               TRAIN_RM: "training", JOINT_TRAIN: "training", EVALUATE: "evaluation"}


def stage_seconds(layout: RunLayout, round_index: int, stages: Sequence[str]) -> dict[str, float | None]:
    """Wall seconds of each stage of a round, from its manifest's timestamps (a resumed stage counts from its
    first start); None when the stage is not complete or its manifest records none."""
    found: dict[str, float | None] = {}
    for stage in stages:
        directory = layout.stage_dir(round_index, stage)
        times = (read_manifest(directory).get("timestamps") or {}) if is_complete(directory) else {}
        started, finished = times.get("started"), times.get("finished")
        found[stage] = round(finished - started, 1) if started is not None and finished is not None else None
    return found


def cost_rows(layout: RunLayout, rounds: int, stages: Sequence[str]) -> list[dict[str, Any]]:
    """Per round: seconds per stage, the total, and the share of generation, ranking, training and evaluation."""
    rows = []
    for k in range(rounds):
        seconds = stage_seconds(layout, k, stages)
        total = sum(v for v in seconds.values() if v is not None)
        shares: dict[str, float] = {}
        for stage, value in seconds.items():
            group = COST_GROUPS.get(stage, stage)
            shares[group] = shares.get(group, 0.0) + (value or 0.0) / total if total else 0.0
        row: dict[str, Any] = {"round": k, **{f"{s}_s": v for s, v in seconds.items()}, "total_s": round(total, 1)}
        rows.append({**row, **{f"{g}_share": round(v, 3) for g, v in shares.items()}})
    return rows


def write_summary(layout: RunLayout, recipe: str, rounds: int, stages: Sequence[str]) -> dict[str, Any]:
    """The per-round table from the manifests of the run's rounds, written as JSON, Markdown and plots."""
    evaluations = ([read_manifest(layout.stage_dir(k, EVALUATE))["metrics"] for k in range(rounds)]
                   if EVALUATE in stages else [])
    extras = [round_extras(layout, k, stages) for k in range(rounds)]
    rows = summary_rows(evaluations, extras) if evaluations else []
    columns = [c for c in EXTRA_COLUMNS if any(row.get(c) is not None for row in rows)] + headline_columns(rows)
    out = layout.summary_dir()
    out.mkdir(parents=True, exist_ok=True)
    table = summary_markdown(rows, columns)
    costs = cost_rows(layout, rounds, stages)
    cost_table = summary_markdown(costs, [c for c in costs[0] if c != "round"]) if costs else ""
    summary = {"recipe": recipe, "rounds": rounds, "rows": rows, "cost": costs}
    write_text_atomic(out / Files.SUMMARY_JSON, json.dumps(summary, indent=2) + "\n")
    write_text_atomic(out / Files.SUMMARY_MARKDOWN, f"# {recipe}: {rounds} round(s)\n\n{table}\n"
                      f"## Cost per round (seconds, share of the round)\n\n{cost_table}")
    for metric in plotted_metrics(rows):
        plot_rounds(rows, metric, out / f"{metric.replace('/', '_')}.png")
    if costs:
        plot_cost(costs, stages, out / "cost.png")
    return summary
