"""The multi-round driver (``alignment_run stage=iterate recipe=<name> rounds=N``): every stage of a recipe, round
after round, in one process.

It does exactly what ``recipes/iterative/run.sh`` does: each stage runs under the artifact contract (skipped
when complete, resumed when partial), so re-running the command after a crash is the resume. Every stage's
config of every round is validated before anything runs. At the end it writes the per-round summary
(:mod:`pipeline.summary`) and prints the table. It is dispatched by the CLI, not registered as a stage.
"""

from __future__ import annotations

import dataclasses
import re
from typing import Any

from pipeline.layout import Files
from pipeline.summary import write_summary as write_rounds_summary
from stages.builders.paths import layout
from stages.config.errors import ConfigError
from stages.config.recipe_settings import stage_config
from stages.config.run_config import RunConfig
from stages.config.validate import validate_or_raise, validate_run
from stages.runner import run_stage


def stage_run(run: RunConfig, stage: str, round_index: int) -> RunConfig:
    """The run config of ``stage`` in round ``round_index``: the stage's defaults plus the recipe's settings."""
    settings = run.recipe.stage_settings.get(stage)
    config = stage_config(stage, settings)
    config.progress, config.log_every = run.stage.progress, run.stage.log_every
    return dataclasses.replace(run, stage=config, round=round_index)


def planned_runs(run: RunConfig) -> list[RunConfig]:
    """Every (round, stage) invocation of the run, in order."""
    return [stage_run(run, stage, k) for k in range(run.rounds) for stage in run.recipe.stages]


def plan_problems(plans: list[RunConfig]) -> list[str]:
    """Every problem of every planned stage, each naming its stage and the rounds it appears in."""
    rounds_of: dict[tuple[str, str], list[int]] = {}
    for plan in plans:
        for problem in validate_run(plan):
            rounds_of.setdefault((plan.stage.name, problem), []).append(plan.round)
    # A stage's own keys are set through the recipe here: name them as the user writes them.
    return [f"round {', '.join(map(str, rounds))}: " + re.sub(r"\bstage\.(?=\w)", f"recipe.stage_settings.{stage}.", problem)
            for (stage, problem), rounds in rounds_of.items()]


def run_rounds(run: RunConfig) -> dict[str, Any]:
    """Run (or skip, or resume) every planned stage, then summarise; returns the summary."""
    validate_or_raise(run)
    plans = planned_runs(run)
    problems = plan_problems(plans)  # every problem of every round before any model loads, also for run.sh
    if problems:
        raise ConfigError(problems)
    if run.stage.list_stages:  # read by recipes/iterative/run.sh
        print(f"rounds {run.rounds}\nrun_dir {run.run_dir}")
        print("\n".join(f"stage {name}" for name in run.recipe.stages))
        return {"stages": list(run.recipe.stages), "rounds": run.rounds, "run_dir": run.run_dir}
    for plan in plans:
        print(f"[iterate] round {plan.round}: stage {plan.stage.name}")
        run_stage(plan)
    return write_summary(run)


def write_summary(run: RunConfig) -> dict[str, Any]:
    """The per-round table of the run's manifests, written to ``{run_dir}/iterate/`` and printed."""
    summary = write_rounds_summary(layout(run), run.recipe.name, run.rounds, run.recipe.stages)
    table = (layout(run).summary_dir() / Files.SUMMARY_MARKDOWN).read_text().split("\n", 2)[-1]
    print(f"[iterate] {run.recipe.name}, {run.rounds} round(s) in {run.run_dir}:\n{table}")
    return summary
