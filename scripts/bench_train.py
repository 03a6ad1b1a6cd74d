"""Training throughput benchmark: our DPO trainer vs TRL's DPOTrainer, the joint schedules, and ablations.

Every configuration runs in its own subprocess (so peak RSS is its own) on the same model (world size
``small``, a tokenizer trained on the HH-RLHF text, fp32), the same HH-RLHF rows, batch size and max length.
Step times leave out the first (warm-up) step; one-off passes (reference cache, TRL precompute) are reported
separately as setup seconds. Usage::

    python scripts/bench_train.py            # full table
    python scripts/bench_train.py --quick    # smoke run (a few steps on a few rows)
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from functools import partial
from pathlib import Path
from typing import Any

HH_TRAIN = "/work/shared/data/hh_rlhf/train.jsonl"
FASTEST = {"ref_cache": True, "prefix_sharing": True, "bucket_window": 32}
CONFIGS: dict[str, dict[str, Any]] = {
    "ours_dpo_fastest": {"kind": "ours", "objective": "preference", **FASTEST},
    "ours_dpo_no_cache": {"kind": "ours", "objective": "preference", **FASTEST, "ref_cache": False},
    "ours_dpo_no_prefix_sharing": {"kind": "ours", "objective": "preference", **FASTEST, "prefix_sharing": False},
    "ours_dpo_no_bucketing": {"kind": "ours", "objective": "preference", **FASTEST, "bucket_window": 1},
    "trl_dpo_default": {"kind": "trl", "precompute": False},
    "trl_dpo_precompute_ref": {"kind": "trl", "precompute": True},
    "sequential": {"kind": "ours", "objective": "sequential", **FASTEST},
    "mix": {"kind": "ours", "objective": "mix", **FASTEST},
    "alright": {"kind": "ours", "objective": "alright", **FASTEST},
    "maxright": {"kind": "ours", "objective": "maxright", **FASTEST},
}


def peak_rss_mib() -> float:
    """Peak resident memory of this process in MiB (Linux reports ru_maxrss in KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def read_hh(rows: int) -> list[dict[str, str]]:
    """The first ``rows`` raw HH-RLHF records (prompt/chosen/rejected strings)."""
    records = []
    with open(HH_TRAIN, encoding="utf-8") as handle:
        for line in handle:
            records.append({k: v for k, v in json.loads(line).items() if k in ("prompt", "chosen", "rejected")})
            if len(records) == rows:
                break
    return records


def prepare_model(directory: Path, rows: int, seed: int) -> None:
    """Train a tokenizer on the HH text and save a freshly built ``small`` model with it to ``directory``."""
    from alignment.models.tiny import build_tiny_model, save_model_dir
    from alignment.models.tokenizer import train_tokenizer

    texts = [text for record in read_hh(rows) for text in record.values()]
    tokenizer = train_tokenizer(texts)
    save_model_dir(build_tiny_model("small", tokenizer, seed), tokenizer, directory)


# --- our trainer ------------------------------------------------------------------------------------------


def load_our_data(model_dir: str, args: argparse.Namespace) -> tuple[Any, list[Any], list[Any]]:
    """Tokenizer, preference pairs and SFT examples (prompt + chosen) of the benchmark rows."""
    from alignment.data.readers import read_rows
    from alignment.data.rows import PreferenceRow, SFTRow
    from alignment.data.tokenize import tokenize_dataset
    from alignment.models.loading import load_tokenizer

    tokenizer = load_tokenizer(model_dir)
    rows = read_rows(HH_TRAIN, kind="preference", max_rows=args.rows).rows
    pairs, _ = tokenize_dataset(tokenizer, rows, max_length=args.max_length)
    sft_rows = [SFTRow(row.id, row.messages, row.chosen) for row in rows if isinstance(row, PreferenceRow)]
    sft, _ = tokenize_dataset(tokenizer, sft_rows, max_length=args.max_length)
    return tokenizer, pairs, sft


def our_reference(model: Any, pairs: list[Any], collate: Any, config: dict[str, Any], args: argparse.Namespace,
                  cache_dir: Path) -> tuple[Any, float]:
    """Live frozen-copy reference, or the cache (computed once; the frozen copy is freed); setup seconds."""
    from alignment.models.loading import frozen_copy
    from alignment.train.components import model_reference
    from alignment.train.ref_cache import CachedReference, compute_reference_table, load_or_build

    live = model_reference(frozen_copy(model))
    if not config["ref_cache"]:
        return live, 0.0
    began = time.perf_counter()
    table, _ = load_or_build(cache_dir, f"bench-{args.rows}-{args.max_length}-{config['prefix_sharing']}",
                             lambda: compute_reference_table(live, pairs, args.batch_size, collate))
    return CachedReference(table), time.perf_counter() - began


def run_ours(config: dict[str, Any], model_dir: str, args: argparse.Namespace, work: Path) -> dict[str, Any]:
    """Train with :class:`JointTrainer`; per-step wall times (MAXRIGHT refreshes included)."""
    import torch

    from alignment.data.collate import collate_preference, collate_prefix_shared, collate_sft
    from alignment.losses import LossParams, LossType
    from alignment.models.loading import disable_dropout, load_causal_lm
    from alignment.objectives import make_schedule
    from alignment.train.batches import CyclingBatches, WithIds, prefix_shared_length
    from alignment.train.components import PreferenceComponent, SFTComponent
    from alignment.train.loop import JointTrainer, LoopSettings
    from alignment.train.setup import make_accelerator, make_optimizer, make_scheduler

    torch.manual_seed(args.seed)
    tokenizer, pairs, sft = load_our_data(model_dir, args)
    pad = int(tokenizer.pad_token_id)
    model = load_causal_lm(model_dir, "float32", "sdpa")
    disable_dropout(model)
    shared = config["prefix_sharing"]
    collate = WithIds(partial(collate_prefix_shared if shared else collate_preference, pad_id=pad))
    reference, setup_s = our_reference(model, pairs, collate, config, args, work / "cache")
    window = config["bucket_window"]
    streams: dict[int, Any] = {
        0: CyclingBatches(sft, args.batch_size, partial(collate_sft, pad_id=pad), args.seed, bucket_window=window),
        1: CyclingBatches(pairs, args.batch_size, collate, args.seed + 1, bucket_window=window,
                          length=prefix_shared_length if shared else None),
    }
    components: dict[int, Any] = {0: SFTComponent(), 1: PreferenceComponent(LossType("dpo"), LossParams(beta=0.1),
                                                                              reference, pad_id=pad)}
    schedule = make_schedule(config["objective"], 0.5, args.seed, args.steps // 2, False, (0.0, 0.0), 10)
    accelerator = make_accelerator("auto", "fp32", 1)
    optimizer = make_optimizer(model, 5e-5, 0.0)
    scheduler = make_scheduler(optimizer, "constant", 0.0, args.steps)
    settings = LoopSettings(max_steps=args.steps, eval_every=10**9, save_every=10**9, log_every=10**9,
                            progress=False)
    times: list[float] = []

    class TimedTrainer(JointTrainer):
        def _refresh(self) -> None:
            began = time.perf_counter()
            super()._refresh()
            times.append(-(time.perf_counter() - began))  # folded into the next step's time

        def _train_step(self, step: int, plan: Any) -> dict[str, float]:
            began = time.perf_counter()
            logged = super()._train_step(step, plan)
            pending = -times.pop() if times and times[-1] < 0 else 0.0
            times.append(time.perf_counter() - began + pending)
            return logged

    trainer = TimedTrainer(accelerator, model, optimizer, scheduler, components, streams, schedule, dict,
                           settings, work / "checkpoints", None)
    result = trainer.run()
    pref_steps = result.steps_per_objective.get("preference", 0)
    return {"step_times": times, "setup_s": setup_s, "pairs_per_step": args.batch_size,
            "tokens_per_pair": mean_pair_tokens(pairs), "preference_share": pref_steps / max(1, result.steps)}


def mean_pair_tokens(pairs: list[Any]) -> float:
    """Real tokens of a pair's two sequences (prompt + chosen, prompt + rejected), averaged."""
    return sum(2 * len(p.prompt_ids) + len(p.chosen_ids) + len(p.rejected_ids) for p in pairs) / max(1, len(pairs))


# --- TRL ----------------------------------------------------------------------------------------------------


def run_trl(config: dict[str, Any], model_dir: str, args: argparse.Namespace, work: Path) -> dict[str, Any]:
    """TRL's DPOTrainer with default settings (optionally ``precompute_ref_log_probs``)."""
    import torch
    from datasets import Dataset
    from transformers import AutoTokenizer, TrainerCallback
    from trl import DPOConfig, DPOTrainer

    torch.manual_seed(args.seed)
    times: list[float] = []

    class StepTimer(TrainerCallback):  # type: ignore[misc]
        began = 0.0

        def on_step_begin(self, *_: Any, **__: Any) -> None:
            self.began = time.perf_counter()

        def on_step_end(self, *_: Any, **__: Any) -> None:
            times.append(time.perf_counter() - self.began)

    dpo_args = DPOConfig(output_dir=str(work / "trl"), per_device_train_batch_size=args.batch_size,
                         max_steps=args.steps, max_length=args.max_length, learning_rate=5e-5,
                         precompute_ref_log_probs=config["precompute"], use_cpu=True, report_to="none",
                         save_strategy="no", logging_steps=10**9, disable_tqdm=True, seed=args.seed)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    trainer = DPOTrainer(model=model_dir, args=dpo_args, train_dataset=Dataset.from_list(read_hh(args.rows)),
                         processing_class=tokenizer, callbacks=[StepTimer()])
    began = time.perf_counter()
    trainer.train()
    total = time.perf_counter() - began
    _, pairs, _ = load_our_data(model_dir, args)
    return {"step_times": times, "setup_s": max(0.0, total - sum(times)), "pairs_per_step": args.batch_size,
            "tokens_per_pair": mean_pair_tokens(pairs), "preference_share": 1.0}


# --- orchestration ------------------------------------------------------------------------------------------


def child(name: str, model_dir: str, args: argparse.Namespace) -> None:
    """Run one configuration and print its measurements as one JSON line."""
    import torch

    torch.set_num_threads(args.threads)
    config = CONFIGS[name]
    with tempfile.TemporaryDirectory() as work:
        runner = run_trl if config["kind"] == "trl" else run_ours
        measured = runner(config, model_dir, args, Path(work))
    measured["peak_rss_mib"] = peak_rss_mib()
    print("RESULT " + json.dumps(measured))


def summarise(name: str, measured: dict[str, Any]) -> dict[str, Any]:
    """steps/s, samples/s (preference pairs), tokens/s and seconds per step over the timed steps."""
    timed = measured["step_times"][1:] or measured["step_times"]
    seconds = sum(timed) / len(timed)
    samples = measured["pairs_per_step"] * measured["preference_share"] / seconds
    return {"config": name, "s_per_step": seconds, "steps_per_s": 1 / seconds, "samples_per_s": samples,
            "tokens_per_s": samples * measured["tokens_per_pair"], "setup_s": measured["setup_s"],
            "peak_rss_mib": measured["peak_rss_mib"]}


def print_table(rows: list[dict[str, Any]]) -> None:
    header = f"{'config':28} {'s/step':>8} {'steps/s':>8} {'samples/s':>10} {'tokens/s':>10} {'setup_s':>8} {'peakRSS':>9}"
    print(header)
    print("-" * len(header))
    for r in rows:
        print(f"{r['config']:28} {r['s_per_step']:8.3f} {r['steps_per_s']:8.3f} {r['samples_per_s']:10.2f} "
              f"{r['tokens_per_s']:10.0f} {r['setup_s']:8.1f} {r['peak_rss_mib']:8.0f}M")


def ratios(by_name: dict[str, dict[str, Any]]) -> str:
    """The final line: throughput against TRL, joint schedules' time per step against sequential."""
    ours = by_name["ours_dpo_fastest"]["samples_per_s"]
    sequential = by_name["sequential"]["s_per_step"]
    return (f"RATIOS ours/trl_default={ours / by_name['trl_dpo_default']['samples_per_s']:.2f}x (target >=1.5) "
            f"ours/trl_precompute={ours / by_name['trl_dpo_precompute_ref']['samples_per_s']:.2f}x (target >=1.2) "
            f"alright/sequential={by_name['alright']['s_per_step'] / sequential:.2f}x (target <=1.05) "
            f"maxright/sequential={by_name['maxright']['s_per_step'] / sequential:.2f}x (target <=1.15) "
            f"mix/sequential={by_name['mix']['s_per_step'] / sequential:.2f}x")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="smoke run: few rows, few steps, short sequences")
    parser.add_argument("--rows", type=int, default=400)
    parser.add_argument("--steps", type=int, default=25)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--max-length", type=int, default=256)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--configs", default=",".join(CONFIGS), help="comma-separated subset")
    parser.add_argument("--child", default="", help=argparse.SUPPRESS)
    parser.add_argument("--model-dir", default="", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.quick:
        args.rows, args.steps, args.batch_size, args.max_length = 24, 3, 4, 96
    if args.child:
        child(args.child, args.model_dir, args)
        return
    names = [n for n in args.configs.split(",") if n]
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = Path(tmp) / "model"
        prepare_model(model_dir, args.rows, args.seed)
        rows = []
        for name in names:
            command = [sys.executable, __file__, "--child", name, "--model-dir", str(model_dir), "--rows",
                       str(args.rows), "--steps", str(args.steps), "--batch-size", str(args.batch_size),
                       "--max-length", str(args.max_length), "--threads", str(args.threads), "--seed", str(args.seed)]
            env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "HF_HUB_OFFLINE": "1"}
            done = subprocess.run(command, capture_output=True, text=True, env=env, check=False)
            lines = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
            if done.returncode != 0 or not lines:
                raise SystemExit(f"configuration {name} failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
            rows.append(summarise(name, json.loads(lines[-1][len("RESULT "):])))
            print(f"[bench] {name}: {rows[-1]['s_per_step']:.3f} s/step", flush=True)
    print(f"rows={args.rows} steps={args.steps} batch={args.batch_size} max_length={args.max_length} "
          f"threads={args.threads} (first step of each run not timed)")
    print_table(rows)
    by_name = {r["config"]: r for r in rows}
    if set(CONFIGS) <= set(by_name):
        print(ratios(by_name))


if __name__ == "__main__":
    main()
