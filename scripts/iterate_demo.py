"""Rounds improve the model: a recipe for several rounds, with the per-round table.

    .venv/bin/python scripts/iterate_demo.py                      # toy: 3 rounds on the embedded world
    .venv/bin/python scripts/iterate_demo.py --rounds 2 world=ci  # extra key=value overrides go to every stage
    .venv/bin/python scripts/iterate_demo.py --recipe smol --out docs/smol \\
        recipe.stage_settings.rank.ranker_model=runs/rm_hh_long/round_00/train_rm \\
        recipe.stage_settings.evaluate.ranker_model=runs/rm_hh_judge/round_00/train_rm

Runs ``stage=iterate recipe=<name>`` (the same stages ``recipes/iterative/run.sh`` runs, resumable) and copies the
summary table and its plots to ``--out``. For a recipe whose evaluation is a win rate against the previous round
(``smol``), it then evaluates every round's model against the starting model on the same instructions with the
same judge (one more evaluate artifact, ``{run_dir}/vs_start``), adds that column to the table (``vs_start.md``) and
draws both win rates with their CIs (``win_rates.png``).
"""

from __future__ import annotations

import argparse
import shutil
import time
from pathlib import Path
from typing import Any

from experiments import say, table

from alignment.evaluation.plots import plot_series_with_intervals
from pipeline.layout import JOINT_TRAIN, Files, RunLayout, stage_dir
from pipeline.summary import interval_points
from stages.compose import compose_run
from stages.iterate import run_rounds
from stages.runner import run_stage


def versus_start(args: argparse.Namespace, run_dir: Path) -> dict[int, dict[str, Any]]:
    """Win rate of each round's model against the starting model's answers, with the recipe's evaluate settings
    (judge, instructions, sampling): ``{round: {metric: value}}``."""
    from stages.evaluate import model_key

    models = [str(stage_dir(run_dir, k, JOINT_TRAIN)) for k in range(args.rounds)]
    plan = compose_run("stage=evaluate", f"recipe={args.recipe}", f"run_dir={run_dir / 'vs_start'}",
                       f"stage.models=[{','.join(models)}]", "stage.suites=[win_rate]",
                       "stage.win_rate_baseline=base", *args.overrides)
    say("every round's model against the starting model", "iterate_demo")
    metrics = run_stage(plan)["metrics"]
    return {k: {name.split("/", 2)[2]: value for name, value in metrics.items()
                if name.startswith(f"win_rate/{model_key(spec)}/")} for k, spec in enumerate(models)}


def plot_win_rates(rows: list[dict[str, Any]], path: Path) -> Path:
    """Each round's win rate against the previous round and against the start, with 95% CIs, on one plot."""
    series = {"vs the previous round": interval_points(rows, "win_rate/win_rate"),
              "vs the starting model": interval_points(rows, "vs_start/win_rate")}
    return plot_series_with_intervals(series, path, ylabel="win rate (judge)", reference_line=0.5,
                                      title="each round's model, judged by the second reward model")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--recipe", default="toy")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--run-dir", default="")
    parser.add_argument("--out", default="docs")
    parser.add_argument("overrides", nargs="*", help="key=value overrides for every stage")
    args = parser.parse_args()
    started = time.perf_counter()
    run_dir = Path(args.run_dir or f"runs/{args.recipe}_demo")
    run = compose_run("stage=iterate", f"recipe={args.recipe}", f"rounds={args.rounds}", f"run_dir={run_dir}",
                      *args.overrides)
    summary = run_rounds(run)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    source = RunLayout.of(run_dir).summary_dir()
    for picture in source.glob("*.png"):
        shutil.copyfile(picture, out / picture.name)
    shutil.copyfile(source / Files.SUMMARY_MARKDOWN, out / "summary.md")
    if "win_rate" in run.recipe.stage_settings.get("evaluate", {}).get("suites", []):
        start = versus_start(args, run_dir)
        rows = [{"round": row["round"], **{k: v for k, v in row.items() if k != "round"},
                 **{f"vs_start/{k}": v for k, v in start.get(row["round"], {}).items()}}
                for row in summary["rows"] if row["round"] != "base"]
        text = table(rows)
        (out / "vs_start.md").write_text(text + "\n")
        plot_win_rates(rows, out / "win_rates.png")
        print(text)
    print(f"{args.recipe}: {args.rounds} round(s) in {time.perf_counter() - started:.0f} s; table and plots in {out}")


if __name__ == "__main__":
    main()
