"""The per-round table of an iterative run: one row for the starting model, then one per round.

Values come from each round's ``evaluate`` manifest (its headline metrics ``<suite>/<model key>/<metric>``):
the row "base" holds round 0's ``policy`` numbers, row ``k`` the numbers of round ``k``'s trained model. The
table is written to ``{run_dir}/iterate/`` as JSON, Markdown and one plot per headline metric.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from alignment.evaluation.plots import plt, save_figure
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


def plot_rounds(rows: Sequence[Mapping[str, Any]], metric: str, path: str | Path) -> Path:
    """``metric`` per round (x: base, 0, 1, ...) as a line with markers."""
    points = [(str(row["round"]), row[metric]) for row in rows if metric in row]
    figure, axes = plt.subplots(figsize=(5.5, 3.8))
    axes.plot([label for label, _ in points], [value for _, value in points], marker="o")
    axes.set_xlabel("after round")
    axes.set_ylabel(metric)
    axes.grid(alpha=0.3)
    return save_figure(figure, path)


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
    for metric in headline_columns(rows):
        plot_rounds(rows, metric, out / f"{metric.replace('/', '_')}.png")
    return summary
