"""``stage=iterate recipe=<name> rounds=N``: every stage of a recipe, round after round, in one process.

It does exactly what ``recipes/iterative/run.sh`` does: each stage runs under the artifact contract (skipped
when complete, resumed when partial), so re-running the command after a crash is the resume. Every stage's
config of every round is validated before anything runs. At the end it writes ``{run_dir}/iterate/summary.json``,
``summary.md`` and one plot per headline metric, and prints the table.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

from alignment.artifacts import read_manifest, stage_dir
from stages.config.recipe import stage_config
from stages.config.stage_configs import RunConfig

SUMMARY_DIR = "iterate"


def stage_run(run: RunConfig, stage: str, round_index: int) -> RunConfig:
    """The run config of ``stage`` in round ``round_index``: the stage's defaults plus the recipe's settings."""
    settings = run.recipe.stage_settings.get(stage)
    config = stage_config(stage, settings)
    config.progress, config.log_every = run.stage.progress, run.stage.log_every
    return dataclasses.replace(run, stage=config, round=round_index)


def planned_runs(run: RunConfig) -> list[RunConfig]:
    """Every (round, stage) invocation of the run, in order."""
    return [stage_run(run, stage, k) for k in range(run.rounds) for stage in run.recipe.stages]


def run_rounds(run: RunConfig) -> dict[str, Any]:
    """Run (or skip, or resume) every planned stage, then summarise; returns the summary."""
    from stages.runner import run_stage, validate_or_raise

    validate_or_raise(run)
    if run.stage.list_stages:  # read by recipes/iterative/run.sh
        print(f"rounds {run.rounds}\nrun_dir {run.run_dir}")
        print("\n".join(f"stage {name}" for name in run.recipe.stages))
        return {"stages": list(run.recipe.stages), "rounds": run.rounds, "run_dir": run.run_dir}
    plans = planned_runs(run)
    for plan in plans:  # every problem of every round before any model loads
        validate_or_raise(plan)
    for plan in plans:
        print(f"[iterate] round {plan.round}: stage {plan.stage.name}")
        run_stage(plan)
    return write_summary(run)


def _round_extras(run: RunConfig, round_index: int) -> dict[str, Any]:
    extras: dict[str, Any] = {}
    if "rank" in run.recipe.stages:  # the policy's samples of this round: their mean score and the pairs built
        ranked = read_manifest(stage_dir(run.run_dir, round_index, "rank"))["metrics"]
        extras.update(sample_score=ranked.get("mean_score"), pairs=ranked.get("pairs"))
    if "joint_train" in run.recipe.stages:
        metrics = read_manifest(stage_dir(run.run_dir, round_index, "joint_train"))["metrics"]
        extras["train_steps"] = metrics.get("steps")
    return extras


def write_summary(run: RunConfig) -> dict[str, Any]:
    """The per-round table from the manifests of the run's rounds, written as JSON, Markdown and plots."""
    from alignment.evaluation.rounds_summary import (
        headline_columns,
        plot_rounds,
        summary_markdown,
        summary_rows,
    )

    rounds = range(run.rounds)
    evaluations = ([read_manifest(stage_dir(run.run_dir, k, "evaluate"))["metrics"] for k in rounds]
                   if "evaluate" in run.recipe.stages else [])
    rows = summary_rows(evaluations, [_round_extras(run, k) for k in rounds]) if evaluations else []
    extras = ("sample_score", "pairs", "train_steps")
    columns = [c for c in extras if any(row.get(c) is not None for row in rows)] + headline_columns(rows)
    out = Path(run.run_dir) / SUMMARY_DIR
    out.mkdir(parents=True, exist_ok=True)
    table = summary_markdown(rows, columns)
    summary = {"recipe": run.recipe.name, "rounds": run.rounds, "rows": rows}
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    (out / "summary.md").write_text(f"# {run.recipe.name}: {run.rounds} round(s)\n\n{table}")
    for metric in headline_columns(rows):
        plot_rounds(rows, metric, out / f"{metric.replace('/', '_')}.png")
    print(f"[iterate] {run.recipe.name}, {run.rounds} round(s) in {run.run_dir}:\n{table}")
    return summary
