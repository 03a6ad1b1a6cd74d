"""Evaluate stage=filter on the embedded world: selection quality, downstream SFT, cost.

Runs the filter, then joint_train ``objective=sft`` on the filtered rows, on all candidates and on a random
subset of the same size, and prints one table: AUROC, precision/recall of the kept rows, verifier accuracy of
each downstream model, times, and the cost ratio filter time / one SFT epoch over the pool (target <= 2.5x).

Example: ``python scripts/filter_eval.py --run-dir runs/filter_eval --world ci --train-steps 100``.
Extra ``--filter key=value`` / ``--train key=value`` overrides go to the two stages.
"""

from __future__ import annotations

import argparse
import math
import random
from pathlib import Path
from typing import Any

from alignment.data.readers import read_rows, write_jsonl
from stages.compose import compose_run
from stages.filter import filtered_dataset_path
from stages.paths import WORLD_DATA_DIR, prepare_dir
from stages.runner import run_stage


def _args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run-dir", required=True, type=Path)
    parser.add_argument("--world", default="ci", help="world config (ci | default)")
    parser.add_argument("--train-steps", type=int, default=100)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--filter", action="append", default=[], help="override for stage=filter")
    parser.add_argument("--train", action="append", default=[], help="override for stage=joint_train")
    return parser.parse_args()


def _train(base: Path, name: str, data_path: str, args: argparse.Namespace) -> dict[str, Any]:
    run = compose_run("stage=joint_train", f"world={args.world}", f"run_dir={base / name}", f"world_dir={base}",
                      "objective=sft", f"data.sft.path={data_path}", f"stage.train.max_steps={args.train_steps}",
                      f"stage.train.sft_batch_size={args.batch_size}", "stage.progress=false", f"seed={args.seed}",
                      *args.train)
    metrics: dict[str, Any] = run_stage(run)["metrics"]
    return metrics


def _verifier(metrics: dict[str, Any]) -> float:
    """Overall verifier accuracy: ``verifier/all`` when reported, else the mean over task families."""
    if "verifier/all" in metrics:
        return float(metrics["verifier/all"])
    values = [float(v) for k, v in metrics.items() if k.startswith("verifier/") and isinstance(v, (int, float))]
    return sum(values) / len(values) if values else float("nan")


def main() -> None:
    args = _args()
    base = args.run_dir
    run_stage(compose_run("stage=prepare", f"world={args.world}", f"run_dir={base}", "stage.progress=false"))
    filter_metrics = run_stage(compose_run(
        "stage=filter", f"world={args.world}", f"run_dir={base}", f"stage.batch_size={args.batch_size}",
        "stage.progress=false", f"seed={args.seed}", *args.filter))["metrics"]
    world = compose_run("stage=prepare", f"world={args.world}", f"run_dir={base}")
    pool_file = prepare_dir(world) / WORLD_DATA_DIR / "candidates.jsonl"
    pool = read_rows(pool_file, "sft").rows
    random_file = base / "random_subset.jsonl"
    write_jsonl(random_file, random.Random(args.seed).sample(pool, filter_metrics["kept"]))
    runs = {"filtered": filtered_dataset_path(base), "all": str(pool_file), "random": str(random_file)}
    downstream = {name: _train(base, name, path, args) for name, path in runs.items()}
    epoch_seconds = downstream["all"]["seconds_per_step"] * math.ceil(len(pool) / args.batch_size)
    print(f"\nselection: AUROC={filter_metrics.get('selection/auroc', float('nan')):.3f}  "
          f"precision={filter_metrics.get('selection/precision', float('nan')):.3f}  "
          f"recall={filter_metrics.get('selection/recall', float('nan')):.3f}  kept={filter_metrics['kept']}/"
          f"{filter_metrics['scored']}  filter time={filter_metrics['filter_seconds']:.1f}s  "
          f"cost ratio (filter / one SFT epoch over the pool)={filter_metrics['filter_seconds'] / epoch_seconds:.2f}x")
    print(f"{'train data':<10} {'rows':>6} {'verifier acc':>13} {'before':>8} {'train s':>8}")
    sizes = {"filtered": filter_metrics["kept"], "all": len(pool), "random": filter_metrics["kept"]}
    for name, metrics in downstream.items():
        before = {k.replace("verifier_before", "verifier", 1): v for k, v in metrics.items()
                  if k.startswith("verifier_before")}
        print(f"{name:<10} {sizes[name]:>6} {_verifier(metrics):>13.3f} {_verifier(before):>8.3f} "
              f"{metrics['train_seconds']:>8.1f}")


if __name__ == "__main__":
    main()
