"""Evaluate stage=filter on the embedded world: selection quality, downstream SFT, cost.

Runs the filter, then joint_train ``objective=sft`` on the filtered rows, on all candidates and on a random
subset of the same size, and prints one table: AUROC, precision/recall of the kept rows, verifier accuracy of
each downstream model, times, and the cost ratio filter time / one SFT epoch over the pool (target <= 2.5x). The
benchmark line times both in this process, interleaved (``--bench-reps``); the ratio of the stage processes'
own times is printed too, but on a shared machine it moves with the load of other jobs.

Example: ``python scripts/filter_eval.py --run-dir runs/filter_eval --world ci --train-steps 100``.
Extra ``--filter key=value`` / ``--train key=value`` overrides go to the two stages, ``--world-option
corruption=near_miss`` to every stage (the kind of noise: mismatch, the default, near_miss or mixed).
"""

from __future__ import annotations

import argparse
import math
import random
import statistics
import time
from pathlib import Path
from typing import Any

from alignment.data.readers import read_rows, write_jsonl
from stages.builders.paths import WORLD_DATA_DIR, prepare_dir
from stages.compose import compose_run
from stages.filter import filtered_dataset_path
from stages.runner import run_stage


def _args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run-dir", required=True, type=Path)
    parser.add_argument("--world", default="ci", help="world config (ci | default)")
    parser.add_argument("--world-option", action="append", default=[], metavar="KEY=VALUE",
                        help="world setting for every stage, e.g. corruption=near_miss")
    parser.add_argument("--train-steps", type=int, default=100)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--filter", action="append", default=[], help="override for stage=filter")
    parser.add_argument("--train", action="append", default=[], help="override for stage=joint_train")
    parser.add_argument("--bench-reps", type=int, default=3,
                        help="interleaved filter-pass / SFT-epoch timings in this process for the cost line (0: skip)")
    return parser.parse_args()


def _world(args: argparse.Namespace) -> list[str]:
    """The world overrides every stage of the evaluation shares."""
    return [f"world={args.world}", *(f"world.{option}" for option in args.world_option)]


def _train(base: Path, name: str, data_path: str, args: argparse.Namespace) -> dict[str, Any]:
    run = compose_run("stage=joint_train", *_world(args), f"run_dir={base / name}", f"world_dir={base}",
                      "objective=sft", f"data.sft.path={data_path}", f"stage.train.max_steps={args.train_steps}",
                      f"stage.train.sft_batch_size={args.batch_size}", "stage.progress=false", f"seed={args.seed}",
                      *args.train)
    metrics: dict[str, Any] = run_stage(run)["metrics"]
    return metrics


def _benchmark(base: Path, args: argparse.Namespace) -> dict[str, float]:
    """Cost of the filter against one SFT epoch over the pool, timed in this process.

    Each repetition times one SFT epoch (forward, backward, clipping and AdamW, as in joint_train's loop, on
    batches of ``--batch-size`` candidates) and then the configured filter run, from fresh models. The two halves
    of a repetition run back to back, so they share the load of other jobs; separate stage processes minutes
    apart do not (on a shared 2-core machine their times per step varied by 2x).
    """
    import torch

    from alignment.filtering.bilevel import train_selector
    from alignment.train.components import SFTComponent
    from alignment.train.setup import make_optimizer
    from stages.filter import build_selection, inputs

    run = compose_run("stage=filter", *_world(args), f"run_dir={base}", f"stage.batch_size={args.batch_size}",
                      f"seed={args.seed}", *args.filter)
    sft_seconds, filter_seconds, steps = [], [], 0
    for _ in range(args.bench_reps):
        sft = build_selection(run, inputs(run))
        optimizer, component = make_optimizer(sft.model, 1e-4, 0.0), SFTComponent()
        sft.model.train()
        device = next(sft.model.parameters()).device
        start = time.perf_counter()
        for _ in range(sft.settings.steps_per_epoch):
            batch = {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in sft.candidates.next().items()}
            component.loss(sft.model, batch)[0].backward()
            torch.nn.utils.clip_grad_norm_(sft.model.parameters(), 1.0)
            optimizer.step()
            optimizer.zero_grad()
        sft_seconds.append(time.perf_counter() - start)
        del sft, optimizer
        setup = build_selection(run, inputs(run))
        result = train_selector(setup.model, setup.proxy, setup.selector, setup.golden, setup.candidates,
                                setup.loss_fn, setup.settings)
        filter_seconds.append(result.seconds)
        steps = result.steps
    ratios = [f / s for f, s in zip(filter_seconds, sft_seconds, strict=True)]
    return {"filter_seconds": statistics.median(filter_seconds), "sft_epoch_seconds": statistics.median(sft_seconds),
            "ratio": statistics.median(ratios), "steps": float(steps)}


def _verifier(metrics: dict[str, Any]) -> float:
    """Overall verifier accuracy: ``verifier/all`` when reported, else the mean over task families."""
    if "verifier/all" in metrics:
        return float(metrics["verifier/all"])
    values = [float(v) for k, v in metrics.items() if k.startswith("verifier/") and isinstance(v, (int, float))]
    return sum(values) / len(values) if values else float("nan")


def main() -> None:
    args = _args()
    base = args.run_dir
    run_stage(compose_run("stage=prepare", *_world(args), f"run_dir={base}", "stage.progress=false"))
    filter_metrics = run_stage(compose_run(
        "stage=filter", *_world(args), f"run_dir={base}", f"stage.batch_size={args.batch_size}",
        "stage.progress=false", f"seed={args.seed}", *args.filter))["metrics"]
    world = compose_run("stage=prepare", *_world(args), f"run_dir={base}")
    pool_file = prepare_dir(world) / WORLD_DATA_DIR / "candidates.jsonl"
    pool = read_rows(pool_file, "sft").rows
    random_file = base / "random_subset.jsonl"
    write_jsonl(random_file, random.Random(args.seed).sample(pool, filter_metrics["kept"]))
    runs = {"filtered": filtered_dataset_path(base), "all": str(pool_file), "random": str(random_file)}
    bench = _benchmark(base, args) if args.bench_reps > 0 else None
    downstream = {name: _train(base, name, path, args) for name, path in runs.items()}
    print()
    print(_report(args, world, filter_metrics, downstream, len(pool), bench))


def _report(args: argparse.Namespace, world: Any, selection: dict[str, Any], downstream: dict[str, dict[str, Any]],
            pool_size: int, bench: dict[str, float] | None) -> str:
    """The validation table (markdown): selection quality, cost, and per training set the greedy verifier
    accuracy on held-out world prompts (before = the base model) and the loss on the clean ``sft_eval`` rows."""
    epoch_steps = math.ceil(pool_size / args.batch_size)
    # the three downstream runs do the same work per step (SFT, same model and batch size); their median time
    # per step damps the load of other jobs on a shared machine
    step_seconds = statistics.median(float(m["seconds_per_step"]) for m in downstream.values())
    epoch_seconds = step_seconds * epoch_steps
    kinds = "  ".join(f"AUROC[{k.removeprefix('selection/auroc_')}]={v:.3f}" for k, v in sorted(selection.items())
                      if k.startswith("selection/auroc_"))
    lines = [
        f"world={args.world} (corruption={world.world.corruption}, {pool_size} candidates, "
        f"{selection.get('corrupted', 0)} corrupted), seed={args.seed}, batch={args.batch_size}, "
        f"downstream SFT steps={args.train_steps}",
        "",
        f"selection: AUROC={selection.get('selection/auroc', math.nan):.3f}  {kinds}  "
        f"precision={selection.get('selection/precision', math.nan):.3f}  "
        f"recall={selection.get('selection/recall', math.nan):.3f}  kept={selection['kept']}/{selection['scored']}",
        f"cost, separate processes: filter stage {selection['filter_seconds']:.1f}s ({selection['steps']} steps) / "
        f"one SFT epoch over the pool {epoch_seconds:.1f}s ({epoch_steps} steps x {step_seconds:.3f}s, median of "
        f"the 3 SFT runs) = {selection['filter_seconds'] / epoch_seconds:.2f}x",
        *([] if bench is None else [
            f"cost, same process ({args.bench_reps} interleaved reps, median): filter {bench['filter_seconds']:.1f}s "
            f"({bench['steps']:.0f} steps) / one SFT epoch over the pool {bench['sft_epoch_seconds']:.1f}s = "
            f"{bench['ratio']:.2f}x (target <= 2.5x)"]),
        "",
        "| train data | rows | verifier acc | before | held-out SFT loss | train s |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    sizes = {"filtered": selection["kept"], "all": pool_size, "random": selection["kept"]}
    for name, metrics in downstream.items():
        before = {k.replace("verifier_before", "verifier", 1): v for k, v in metrics.items()
                  if k.startswith("verifier_before")}
        lines.append(f"| {name} | {sizes[name]} | {_verifier(metrics):.3f} | {_verifier(before):.3f} | "
                     f"{metrics.get('eval/sft_loss', math.nan):.3f} | {metrics['train_seconds']:.1f} |")
    return "\n".join(lines)

if __name__ == "__main__":
    main()
