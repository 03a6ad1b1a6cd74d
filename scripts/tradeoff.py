"""Trade-off between SFT and preference learning: sequential SFT→DPO, mix, ALRIGHT and MAXRIGHT on equal
budgets, on the embedded world (default) or on ../shared/data HH-RLHF + Alpaca (``--data hh_alpaca``).

    .venv/bin/python scripts/tradeoff.py                       # world, tiny model, λ ∈ {0.25, 0.5, 0.75}
    .venv/bin/python scripts/tradeoff.py --data hh_alpaca --steps 150

Every method gets the same number of optimizer steps from the same base model and reference. The ideal point
(f*_SFT, f*_pref) is the best held-out loss of the single-objective runs with that budget. Prints a table,
writes ``tradeoff.md``, ``tradeoff.json`` and the loss-space plot ``tradeoff.png`` into the run directory.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path
from typing import Any

from alignment.evaluation.plots import plot_loss_space
from alignment.train.metrics_log import read_metrics
from pipeline.layout import stage_dir
from stages.compose import compose_run
from stages.runner import run_stage

METHODS = ("sequential", "mix", "alright", "maxright")


def train(run_dir: Path, world_dir: Path, common: list[str], *overrides: str) -> dict[str, Any]:
    run = compose_run("stage=joint_train", f"run_dir={run_dir}", f"world_dir={world_dir}", *common, *overrides)
    started = time.perf_counter()
    manifest = run_stage(run)
    metrics = dict(manifest["metrics"])
    metrics.setdefault("wall_seconds", round(time.perf_counter() - started, 1))
    evals = [r for r in read_metrics(stage_dir(run_dir, 0, "joint_train") / "logs" / "metrics.jsonl")
             if "eval/sft_loss" in r]
    return {"metrics": metrics, "evals": evals}


def row(name: str, lambd: float | None, result: dict[str, Any], ideal: tuple[float, float]) -> dict[str, Any]:
    m = result["metrics"]
    distance = math.hypot(m["eval/sft_loss"] - ideal[0], m["eval/pref_loss"] - ideal[1])
    return {
        "method": name, "lambda": lambd, "sft_loss": m["eval/sft_loss"], "pref_loss": m["eval/pref_loss"],
        "reward_acc": m["eval/reward_accuracy"], "verifier_sft": m.get("verifier/sft_families"),
        "verifier_pref": m.get("verifier/pref_families"), "dist_ideal": distance,
        "wall_s": m.get("train_seconds"), "s_per_step": m["seconds_per_step"],
    }


def fmt(value: Any) -> str:
    if value is None:
        return "-"
    return f"{value:.3f}" if isinstance(value, float) else str(value)


def table(rows: list[dict[str, Any]]) -> str:
    headers = list(rows[0])
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(fmt(r[h]) for h in headers) + " |" for r in rows]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run-dir", default="runs/tradeoff")
    parser.add_argument("--data", default="world", choices=["world", "hh_alpaca"])
    parser.add_argument("--model", default="tiny", choices=["tiny", "small"])
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--lambdas", type=float, nargs="+", default=[0.25, 0.5, 0.75])
    parser.add_argument("--world", default="default", help="world config (ci for a quick check)")
    parser.add_argument("overrides", nargs="*", help="extra alignment_run overrides for every run")
    args = parser.parse_args()

    root = Path(args.run_dir)
    world_dir = root / "world"
    common = [f"data={args.data}", f"model={args.model}", f"world={args.world}", "stage.progress=false",
              f"stage.train.max_steps={args.steps}", f"stage.train.eval_every={max(1, args.steps // 10)}",
              *args.overrides]
    single = {name: train(root / f"single-{name}", world_dir, common, f"objective={name}")
              for name in ("sft", "preference")}
    ideal = (single["sft"]["metrics"]["eval/sft_loss_best"], single["preference"]["metrics"]["eval/pref_loss_best"])
    rows = [row(f"only {name}", None, result, ideal) for name, result in single.items()]
    trajectories = {f"only {name}": result["evals"] for name, result in single.items()}
    optima = [f"objective.sft_opt={ideal[0]}", f"objective.dpo_opt={ideal[1]}"]
    for lambd in args.lambdas:
        for method in METHODS:
            extra = [f"objective.split_fraction={1 - lambd}"] if method == "sequential" else []
            result = train(root / f"{method}-{lambd}", world_dir, common, f"objective={method}",
                           f"objective.lambd={lambd}", *optima, *extra)
            rows.append(row(method, lambd, result, ideal))
            trajectories[f"{method} λ={lambd}"] = result["evals"]
    text = table(rows)
    print(f"\nideal point (f*_SFT, f*_pref) = ({ideal[0]:.3f}, {ideal[1]:.3f}); {args.steps} steps per run\n")
    print(text)
    plot_loss_space(trajectories, root / "tradeoff.png", ideal=ideal,
                    title=f"{args.data}, {args.model}, {args.steps} steps per method")
    (root / "tradeoff.md").write_text(text + "\n")
    (root / "tradeoff.json").write_text(json.dumps({"ideal": ideal, "rows": rows}, indent=1))
    by_method = {m: [r["dist_ideal"] for r in rows if r["method"] == m] for m in METHODS}
    summary = ", ".join(f"{m} {sum(v) / len(v):.3f}" for m, v in by_method.items())
    print(f"\nmean distance to the ideal point: {summary}  (plot: {root / 'tradeoff.png'})")


if __name__ == "__main__":
    main()
