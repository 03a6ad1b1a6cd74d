"""Does golden-set selection (stage=filter) beat random? Selection quality against known noise, its cost against
one SFT epoch over the pool, and the downstream SFT models.

World mode (default): the embedded world's candidate pool, whose noise the world labels::

    python scripts/filter_eval.py --run-dir runs/filter_eval --world ci --train-steps 100

Real mode (``--model smollm2``): ``--pool-size`` rows of ../shared/data/alpaca_cleaned with ``--noise`` of them
corrupted (swapped answers, truncated answers, same-topic answers, near duplicates; labels kept beside the pool in
``pool/labels.jsonl``), the Alpaca-GPT4 rows as the golden set, SmolLM2 with LoRA as the selector (value-function
term on), one pass; then SFT of SmolLM2 on the filtered rows, a random subset of the same size, all rows, and the
cheap baseline (the rows with the lowest loss under a model SFT'd on the golden set), same steps and seed; held-out
SFT loss on alpaca_gpt4/test and, with ``--judge`` (a reward model), win rates of AlpacaEval answers against the
all-rows model's, with CIs and lengths::

    python scripts/filter_eval.py --model smollm2 --run-dir runs/filter_real --judge DIR

With ``--filter stage.epochs=N`` the selector makes N passes and the report gives its quality after each;
``--selection-only`` stops after the selection (and the cost line), before any downstream training.

Each step is an artifact: re-running skips what is complete. The cost line times ``--bench-steps`` filter steps
and as many SFT steps interleaved in this process (the same batches size), and scales both to one pass.
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import random
import statistics
import time
from pathlib import Path
from typing import Any

from experiments import Judging, evaluate, say, table, win_rate_columns

from alignment.data.readers import read_jsonl, read_rows, write_jsonl
from alignment.evaluation.stats import estimate
from alignment.filtering.noise import CLEAN, NOISE_KINDS, corrupt_pool
from alignment.filtering.report import plot_weights_by_kind
from alignment.filtering.selection import auroc_by_kind, keep_mask, selection_quality
from pipeline.layout import FILTER, JOINT_TRAIN, Files, RunLayout, stage_dir, trained_model
from stages.compose import compose_run
from stages.runner import run_stage

REAL = ["model=smollm2", "model.lora.enabled=true", "data=hh_alpaca"]


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run-dir", required=True, type=Path)
    parser.add_argument("--model", default="world", choices=["world", "smollm2"])
    parser.add_argument("--world", default="ci", help="world mode: world config (ci | default)")
    parser.add_argument("--world-option", action="append", default=[], metavar="KEY=VALUE",
                        help="world mode: world setting for every stage, e.g. corruption=near_miss")
    parser.add_argument("--pool", default="../shared/data/alpaca_cleaned/train.jsonl")
    parser.add_argument("--pool-size", type=int, default=1000)
    parser.add_argument("--noise", type=float, default=0.3)
    parser.add_argument("--keep-fraction", type=float, default=0.7)
    parser.add_argument("--train-steps", type=int, default=100)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--judge", default="", help="real mode: reward model for the win rates")
    parser.add_argument("--instructions", type=int, default=100)
    parser.add_argument("--bench-steps", type=int, default=8, help="steps of each kind timed for the cost (0: skip)")
    parser.add_argument("--filter", action="append", default=[], help="override for stage=filter")
    parser.add_argument("--train", action="append", default=[], help="override for stage=joint_train")
    parser.add_argument("--selection-only", action="store_true",
                        help="stop after the selection's quality (and cost): no downstream SFT, no judging")
    return parser.parse_args()


def common(args: argparse.Namespace) -> list[str]:
    """Overrides every stage of the evaluation shares."""
    if args.model == "smollm2":
        return [*REAL, f"cache_dir={args.run_dir / 'cache'}", f"seed={args.seed}"]
    return [f"world={args.world}", *(f"world.{o}" for o in args.world_option), f"world_dir={args.run_dir}",
            "stage.progress=false", f"seed={args.seed}"]


def train_sft(base: Path, name: str, data_path: str, args: argparse.Namespace) -> dict[str, Any]:
    say(f"SFT on {name} ({data_path})", "filter_eval")
    # SFT runs: the held-out SFT loss is the measure; the preference loss the loop logs beside it is kept cheap
    cheap_preference = ["data.preference_eval.max_rows=16"] if args.model == "smollm2" else []
    run = compose_run("stage=joint_train", *common(args), f"run_dir={base / name}", "objective=sft",
                      f"data.sft.path={data_path}", f"stage.train.max_steps={args.train_steps}",
                      f"stage.train.sft_batch_size={args.batch_size}", "stage.save_merged=true", *cheap_preference,
                      *args.train)
    metrics: dict[str, Any] = run_stage(run)["metrics"]
    return metrics


def filter_run(base: Path, args: argparse.Namespace, candidates: str | None) -> Any:
    extra = [f"data.candidates.path={candidates}"] if candidates else []
    return compose_run("stage=filter", *common(args), f"run_dir={base}", f"stage.batch_size={args.batch_size}",
                       f"stage.keep_fraction={args.keep_fraction}", *extra, *args.filter)


def bench(base: Path, args: argparse.Namespace, candidates: str | None) -> dict[str, float]:
    """Seconds per filter step and per SFT step on the same candidate batches, timed interleaved in this process
    (``--bench-steps`` of each, twice), and the filter pass over one SFT epoch at equal step counts."""
    import torch

    from alignment.filtering.bilevel import train_selector
    from alignment.train.components import SFTComponent
    from alignment.train.setup import make_optimizer
    from stages.filter import build_selection, inputs

    run = filter_run(base, args, candidates)
    paths = {name: item.path for name, item in inputs(run).items()}
    sft_times, filter_times = [], []
    for _ in range(2):
        sft = build_selection(run, paths)
        optimizer, component = make_optimizer(sft.model, 1e-4, 0.0), SFTComponent()
        sft.model.train()
        device = next(sft.model.parameters()).device
        start = time.perf_counter()
        for _ in range(args.bench_steps):
            batch = {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in sft.candidates.next().items()}
            component.loss(sft.model, batch)[0].backward()
            torch.nn.utils.clip_grad_norm_(sft.model.parameters(), 1.0)
            optimizer.step()
            optimizer.zero_grad()
        sft_times.append((time.perf_counter() - start) / args.bench_steps)
        del sft, optimizer
        setup = build_selection(run, paths)
        setup.settings.steps = args.bench_steps
        filter_times.append(train_selector(setup.model, setup.proxy, setup.selector, setup.golden,
                                           setup.candidates, setup.loss_fn, setup.settings).seconds / args.bench_steps)
    sft_step, filter_step = statistics.median(sft_times), statistics.median(filter_times)
    return {"sft_step_s": sft_step, "filter_step_s": filter_step, "ratio": filter_step / sft_step}


# --- real mode ---------------------------------------------------------------------------------------------


def build_pool(base: Path, args: argparse.Namespace) -> tuple[Path, dict[str, str]]:
    """``pool/pool.jsonl`` (no labels) and ``pool/labels.jsonl`` (``{id, label}``), built once."""
    folder = base / "pool"
    pool, labels_file = folder / "pool.jsonl", folder / "labels.jsonl"
    if not labels_file.is_file():
        source = list(read_jsonl(args.pool))
        rng = random.Random(args.seed)
        picked = rng.sample(range(len(source)), len(source))
        rows = [source[i] for i in picked[: args.pool_size]]
        donors = [source[i] for i in picked[args.pool_size:]]
        corrupted, kinds = corrupt_pool(rows, donors, args.noise, args.seed)
        folder.mkdir(parents=True, exist_ok=True)
        write_jsonl(pool, corrupted)
        read = read_rows(pool, "sft").rows  # ids exactly as the filter stage reads them
        write_jsonl(labels_file, [{"id": row.id, "label": kind} for row, kind in zip(read, kinds, strict=True)])
    return pool, {r["id"]: r["label"] for r in read_jsonl(labels_file)}


def quality(selection: list[dict[str, Any]], labels: dict[str, str]) -> dict[str, float]:
    """AUROC of the weights for clean rows, overall and per noise kind; precision/recall of the kept rows."""
    weights = [row["weight"] for row in selection]
    kinds = [labels[row["id"]] for row in selection]
    noisy = [kind != CLEAN for kind in kinds]
    found = selection_quality(weights, [row["kept"] for row in selection], noisy).to_dict("")
    by_kind = auroc_by_kind(weights, noisy, [kind if kind != CLEAN else None for kind in kinds])
    return {**found, **{f"auroc_{kind}": value for kind, value in by_kind.items()}}


def pass_quality(base: Path, labels: dict[str, str], keep_fraction: float) -> list[dict[str, float]]:
    """:func:`quality` of the weights after each pass of a multi-pass selector (empty after one pass)."""
    folder, found = stage_dir(base, 0, FILTER), list[dict[str, float]]()
    for done in itertools.count(1):
        path = folder / Files.SELECTION_PASS.format(done)
        if not path.is_file():
            return found
        rows = list(read_jsonl(path))
        kept = keep_mask([row["weight"] for row in rows], "top_p", keep_fraction)
        found.append(quality([{**row, "kept": bool(k)} for row, k in zip(rows, kept, strict=True)], labels))
    return found


def subset_rng(seed: int) -> random.Random:
    """The random subset's own stream: ``random.Random(seed)`` would replay the draws that chose the corrupted
    rows (``shuffle`` and ``sample`` consume the same ``randbelow`` sequence), so the "random" subset would be
    exactly the clean rows."""
    return random.Random(f"random-subset-{seed}")


def noisy_share(path: str, labels: dict[str, str]) -> float:
    """The fraction of a training set's rows that the pool's labels mark as corrupted."""
    ids = [row.id for row in read_rows(path, "sft").rows]
    return sum(labels.get(i, CLEAN) != CLEAN for i in ids) / max(1, len(ids))


def wins_by_instruction(judged: dict[str, Any]) -> dict[str, float]:
    """Per instruction, 1 / 0.5 / 0 when the model's answer beats / ties / loses to the baseline's (AlpacaEval
    annotations: preference 2 prefers ``output_2``, the evaluated model)."""
    annotations = json.loads(Path(judged["answers"]).with_name("annotations.json").read_text())
    return {a["instruction"]: float(a["preference"]) - 1.0 for a in annotations}


def gain_over(judged: dict[str, Any], other: dict[str, Any]) -> dict[str, float]:
    """Win-rate points over ``other`` (both judged against the same baseline answers), paired by instruction,
    with a bootstrap 95% CI of the mean difference."""
    mine, theirs = wins_by_instruction(judged), wins_by_instruction(other)
    found = estimate([mine[i] - theirs[i] for i in mine if i in theirs])
    return {"vs_random": found.value, "vs_random_low": found.low, "vs_random_high": found.high}


def loss_baseline(base: Path, args: argparse.Namespace, pool: Path) -> tuple[str, list[dict[str, Any]]]:
    """The cheap baseline: the pool rows with the lowest per-row loss under a model SFT'd on the golden set, at
    the filter's keep fraction. Returns the kept rows' file and ``{id, weight, kept}`` per row (weight = -loss),
    the format of the filter's ``selection.jsonl``, so both selections are measured the same way."""
    out, scores_file = base / "loss_baseline.jsonl", base / "loss_baseline_scores.jsonl"
    if out.is_file() and scores_file.is_file():
        return str(out), list(read_jsonl(scores_file))
    golden = compose_run("stage=joint_train", *common(args)).data.golden.path
    train_sft(base, "golden-sft", golden, args)
    import torch

    from alignment.data.collate import collate_sft
    from alignment.data.tokenize import tokenize_dataset
    from alignment.filtering.bilevel import sft_example_losses
    from alignment.models.loading import load_causal_lm, load_tokenizer

    model_dir = str(trained_model(stage_dir(base / "golden-sft", 0, JOINT_TRAIN)))
    model, tokenizer = load_causal_lm(model_dir, "float32").eval(), load_tokenizer(model_dir)
    rows = read_rows(pool, "sft").rows
    examples, _ = tokenize_dataset(tokenizer, rows, max_length=compose_run(*REAL).data.max_length)
    losses: dict[str, float] = {}
    say(f"scoring {len(examples)} pool rows under the golden-SFT model", "filter_eval")
    with torch.no_grad():
        for start in range(0, len(examples), args.batch_size):
            chunk = examples[start:start + args.batch_size]
            values = sft_example_losses(model, collate_sft(chunk, pad_id=int(tokenizer.pad_token_id)))  # type: ignore[arg-type]
            losses.update({e.id: float(v) for e, v in zip(chunk, values, strict=True)})
    scored = [row for row in rows if row.id in losses]
    kept = keep_mask([-losses[row.id] for row in scored], "top_p", args.keep_fraction)
    scores = [{"id": row.id, "weight": -losses[row.id], "kept": bool(k)} for row, k in zip(scored, kept, strict=True)]
    write_jsonl(out, [row for row, k in zip(scored, kept, strict=True) if k])
    write_jsonl(scores_file, scores)
    return str(out), scores


def main_real(args: argparse.Namespace) -> None:
    base = args.run_dir
    pool, labels = build_pool(base, args)
    say(f"pool of {len(labels)} rows, {sum(v != CLEAN for v in labels.values())} corrupted", "filter_eval")
    selection_metrics = run_stage(filter_run(base, args, str(pool)))["metrics"]
    selection = list(read_jsonl(stage_dir(base, 0, FILTER) / Files.SELECTION))
    found, by_pass = quality(selection, labels), pass_quality(base, labels, args.keep_fraction)
    cost = bench(base, args, str(pool)) if args.bench_steps else None
    if args.selection_only:
        lines = selection_lines(args, len(labels), found, by_pass, None, selection_metrics, cost)
        print("\n".join(lines), flush=True)
        (base / "selection.md").write_text("\n".join(lines) + "\n")
        plot_selection(base, selection, labels)
        return
    kept = [row for row in read_rows(stage_dir(base, 0, FILTER) / Files.FILTERED, "sft").rows]
    random_file, oracle_file = base / "random_subset.jsonl", base / "oracle_clean.jsonl"
    pool_rows = read_rows(pool, "sft").rows
    if not random_file.is_file():
        write_jsonl(random_file, subset_rng(args.seed).sample(pool_rows, len(kept)))
    if not oracle_file.is_file():  # an upper bound: exactly the clean rows, known from the labels
        write_jsonl(oracle_file, [row for row in pool_rows if labels[row.id] == CLEAN])
    baseline_file, baseline_scores = loss_baseline(base, args, pool)
    found_by_loss = quality(baseline_scores, labels)
    sets = {"all": str(pool), "filtered": str(stage_dir(base, 0, FILTER) / Files.FILTERED),
            "random": str(random_file), "loss_baseline": baseline_file, "oracle_clean": str(oracle_file)}
    trained = {name: train_sft(base, name, path, args) for name, path in sets.items()}
    judging = Judging(args.judge, args.instructions)
    judged: dict[str, Any] = {}
    if args.judge:
        model = str(trained_model(stage_dir(base / "all", 0, JOINT_TRAIN)))
        judged["all"] = evaluate(base / "eval-all", model, common(args), ["win_rate"], judging,
                                 "../shared/data/alpaca_eval/eval_set.jsonl")
        for name in ("filtered", "random", "loss_baseline", "oracle_clean"):
            model = str(trained_model(stage_dir(base / name, 0, JOINT_TRAIN)))
            judged[name] = evaluate(base / f"eval-{name}", model, common(args), ["win_rate"], judging,
                                    judged["all"]["answers"])
    compared = {"filtered", "loss_baseline", "oracle_clean"} & judged.keys()  # paired against random
    rows = [{"train data": name, "rows": len(list(read_jsonl(path))), "noisy": noisy_share(path, labels),
             "sft_loss": trained[name]["eval/sft_loss"], "train_s": trained[name]["train_seconds"],
             **win_rate_columns(judged.get(name)),
             **(gain_over(judged[name], judged["random"]) if name in compared else {})}
            for name, path in sets.items()]
    report = {"selection": {**found, "kept": selection_metrics["kept"], "scored": selection_metrics["scored"],
                            "filter_seconds": selection_metrics["filter_seconds"], "steps": selection_metrics["steps"]},
              "loss_baseline_selection": found_by_loss, "cost": cost, "downstream": rows}
    lines = [*selection_lines(args, len(labels), found, by_pass, found_by_loss, selection_metrics, cost), "",
             table(rows)]
    print("\n".join(lines), flush=True)
    (base / "filter_eval.md").write_text("\n".join(lines) + "\n")
    (base / "filter_eval.json").write_text(json.dumps(report, indent=1, default=str))
    plot_selection(base, selection, labels)


def selection_lines(args: argparse.Namespace, pool_rows: int, found: dict[str, float],
                    by_pass: list[dict[str, float]], found_by_loss: dict[str, float] | None,
                    selection_metrics: dict[str, Any], cost: dict[str, float] | None) -> list[str]:
    """The report's header: the setup, the selection's quality against the noise labels (after each pass of a
    multi-pass run too), and its cost."""
    passes = -(-selection_metrics["steps"] // selection_metrics["steps_per_epoch"])  # what ran, max_steps included
    lines = [f"pool: {pool_rows} Alpaca-cleaned rows, {args.noise:.0%} "
             f"corrupted ({', '.join(NOISE_KINDS)}), golden: Alpaca-GPT4 train; selector: SmolLM2-135M LoRA, "
             f"value-function term on, {passes} pass{'es' if passes > 1 else ''}; "
             f"downstream: {args.train_steps} SFT steps, batch {args.batch_size}, seed {args.seed}", "",
             "selection: " + "  ".join(f"{k}={v:.3f}" for k, v in found.items())]
    lines += [f"  after pass {n}: " + "  ".join(f"{k}={v:.3f}" for k, v in q.items())
              for n, q in enumerate(by_pass, start=1)]
    if found_by_loss is not None:
        lines.append("cheap baseline (golden-SFT loss): " + "  ".join(f"{k}={v:.3f}" for k, v in found_by_loss.items()))
    lines.append(f"kept {selection_metrics['kept']}/{selection_metrics['scored']}; selection took "
                 f"{selection_metrics['filter_seconds']:.0f}s ({selection_metrics['steps']} steps)")
    if cost:
        lines.append(f"cost (same process, {args.bench_steps} steps of each, median of 2): filter step "
                     f"{cost['filter_step_s']:.2f}s / SFT step {cost['sft_step_s']:.2f}s = {cost['ratio']:.2f}x one "
                     f"SFT epoch over the pool (target <= 2.5x)")
    return lines


def plot_selection(base: Path, selection: list[dict[str, Any]], labels: dict[str, str]) -> None:
    weight_of = {r["id"]: r["weight"] for r in selection}
    plot_weights_by_kind({kind: [weight_of[i] for i, lab in labels.items() if lab == kind and i in weight_of]
                          for kind in (CLEAN, *NOISE_KINDS)}, base / "weights_by_kind.png")


# --- world mode --------------------------------------------------------------------------------------------


def main_world(args: argparse.Namespace) -> None:
    base = args.run_dir
    run_stage(compose_run("stage=prepare", *common(args), f"run_dir={base}"))
    selection = run_stage(filter_run(base, args, None))["metrics"]
    pool_file = RunLayout.of(base).world_split("candidates")
    pool = read_rows(pool_file, "sft").rows
    random_file = base / "random_subset.jsonl"
    write_jsonl(random_file, subset_rng(args.seed).sample(pool, selection["kept"]))
    sets = {"filtered": str(stage_dir(base, 0, FILTER) / Files.FILTERED), "all": str(pool_file),
            "random": str(random_file)}
    cost = bench(base, args, None) if args.bench_steps else None
    trained = {name: train_sft(base, name, path, args) for name, path in sets.items()}
    kinds = "  ".join(f"{k.removeprefix('selection/')}={v:.3f}" for k, v in sorted(selection.items())
                      if k.startswith("selection/auroc"))
    lines = [f"world={args.world} ({len(pool)} candidates, {selection.get('corrupted', 0)} corrupted), "
             f"seed={args.seed}, batch={args.batch_size}, downstream SFT steps={args.train_steps}", "",
             f"selection: {kinds}  precision={selection.get('selection/precision', math.nan):.3f}  "
             f"recall={selection.get('selection/recall', math.nan):.3f}  kept={selection['kept']}/{selection['scored']}"]
    if cost:
        lines.append(f"cost (same process): filter step {cost['filter_step_s']:.3f}s / SFT step "
                     f"{cost['sft_step_s']:.3f}s = {cost['ratio']:.2f}x one SFT epoch over the pool")
    rows = [{"train data": name, "rows": len(list(read_jsonl(path))),
             "verifier acc": trained[name].get("verifier/all"), "before": trained[name].get("verifier_before/all"),
             "held-out SFT loss": trained[name].get("eval/sft_loss"), "train s": trained[name]["train_seconds"]}
            for name, path in sets.items()]
    print("\n".join([*lines, "", table(rows)]), flush=True)


def main() -> None:
    args = parse_args()
    main_real(args) if args.model == "smollm2" else main_world(args)


if __name__ == "__main__":
    main()
