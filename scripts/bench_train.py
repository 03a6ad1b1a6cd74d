"""Training throughput benchmark: our DPO trainer vs TRL's DPOTrainer, the joint schedules, and ablations.

Every configuration runs in its own subprocess (so peak RSS is its own) on the same model (world size
``small``, a tokenizer trained on the HH-RLHF text, fp32), the same HH-RLHF rows, batch size and max length.
The rows are the first HH-RLHF training rows whose prompt and longer response fit ``max_length`` whole, so no
tool truncates or drops any of them (TRL's default ``keep_start`` drops rows whose prompt alone fills it); TRL
gets them in conversational form and applies the same chat template. TRL runs with its defaults except
precision: ``bf16=False``, because both tools train the fp32 model in fp32 (TRL's default would autocast to
bf16). Step times leave out the first (warm-up) step; one-off passes (reference cache, TRL precompute) are
reported separately as setup seconds. Usage::

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
from typing import Any, cast

HH_TRAIN = Path(__file__).resolve().parents[2] / "shared" / "data" / "hh_rlhf" / "train.jsonl"
TOKENIZER_TEXT_ROWS = 1000  # raw HH rows the benchmark tokenizer is trained on
FASTEST = {"ref_cache": True, "prefix_sharing": True, "bucket_window": 32}
CONFIGS: dict[str, dict[str, Any]] = {
    "ours_dpo_fastest": {"kind": "ours", "objective": "preference", **FASTEST},
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


def read_hh(rows: int) -> list[dict[str, str]]:
    """The first ``rows`` raw HH-RLHF records (prompt/chosen/rejected strings)."""
    records = []
    with open(HH_TRAIN, encoding="utf-8") as handle:
        for line in handle:
            records.append({k: v for k, v in json.loads(line).items() if k in ("prompt", "chosen", "rejected")})
            if len(records) == rows:
                break
    return records


def prepare_model(directory: Path, seed: int) -> None:
    """Train a tokenizer on HH text and save a freshly built ``small`` model with it to ``directory``."""
    from alignment.world.tiny_model import build_tiny_model, save_model_dir
    from alignment.world.tokenizer import train_tokenizer

    texts = [text for record in read_hh(TOKENIZER_TEXT_ROWS) for text in record.values()]
    tokenizer = train_tokenizer(texts)
    save_model_dir(build_tiny_model("small", tokenizer, seed), tokenizer, directory)


def select_rows(model_dir: Path, rows: int, max_length: int, out: Path) -> None:
    """Write to ``out`` the first ``rows`` HH training records that fit ``max_length`` untruncated.

    Two tokens of margin cover the chat template's trailing newline that TRL's tokenization adds.
    """
    from alignment.data.readers import read_rows
    from alignment.data.rows import PreferenceRow
    from alignment.data.tokenize import tokenize_preference
    from alignment.models.loading import load_tokenizer

    tokenizer = load_tokenizer(str(model_dir))
    records = read_hh(10**9)
    parsed = read_rows(HH_TRAIN, kind="preference").rows
    kept = []
    for record, row in zip(records, parsed, strict=True):
        pair = tokenize_preference(tokenizer, row, max_length=10**6) if isinstance(row, PreferenceRow) else None
        if pair is not None and pair.length <= max_length - 2:
            kept.append(record)
        if len(kept) == rows:
            break
    if len(kept) < rows:
        raise SystemExit(f"only {len(kept)} HH rows fit max_length {max_length}; lower --rows or raise --max-length")
    out.write_text("".join(json.dumps(record) + "\n" for record in kept), encoding="utf-8")


# --- our trainer ------------------------------------------------------------------------------------------


def load_our_data(model_dir: str, rows_file: str, max_length: int) -> tuple[Any, list[Any], list[Any]]:
    """Tokenizer, the rows' preference pairs and SFT examples (prompt + chosen)."""
    from alignment.data.readers import read_rows
    from alignment.data.rows import PreferenceRow, SFTRow
    from alignment.data.tokenize import tokenize_dataset
    from alignment.models.loading import load_tokenizer

    tokenizer = load_tokenizer(model_dir)
    rows = read_rows(rows_file, kind="preference").rows
    pairs, stats = tokenize_dataset(tokenizer, rows, max_length=max_length)
    if stats.truncated or stats.kept != len(rows):
        raise SystemExit(f"{rows_file}: {stats.truncated} rows truncated, {len(rows) - stats.kept} dropped")
    sft_rows = [SFTRow(row.id, row.messages, row.chosen) for row in rows if isinstance(row, PreferenceRow)]
    sft, _ = tokenize_dataset(tokenizer, sft_rows, max_length=max_length)
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


def equal_gap_optima(model: Any, components: dict[int, Any], streams: dict[int, Any]) -> tuple[float, float]:
    """MAXRIGHT optima that give both objectives the same starting gap (SFT optimum = f_SFT(θ0) − f_pref(θ0),
    preference optimum 0), so the benchmark run switches between them as a tuned run does."""
    import torch

    with torch.no_grad():
        sft, _ = components[0].loss(model, streams[0].peek())
        preference, _ = components[1].loss(model, streams[1].peek())
    return float(sft) - float(preference), 0.0


def run_ours(config: dict[str, Any], model_dir: str, args: argparse.Namespace, work: Path) -> dict[str, Any]:
    """Train with :class:`JointTrainer`; per-step wall times (MAXRIGHT refreshes included)."""
    import torch

    from alignment.data.collate import collate_preference, collate_prefix_shared, collate_sft
    from alignment.losses import LossParams, LossType
    from alignment.models.loading import disable_dropout, enable_gradient_checkpointing, load_causal_lm
    from alignment.objectives import make_schedule
    from alignment.train.batches import CyclingBatches, WithIds, prefix_shared_length
    from alignment.train.components import PreferenceComponent, SFTComponent
    from alignment.train.loop import JointTrainer, LoopSettings
    from alignment.train.setup import make_accelerator, make_optimizer, make_scheduler

    torch.manual_seed(args.seed)
    tokenizer, pairs, sft = load_our_data(model_dir, args.rows_file, args.max_length)
    pad = int(tokenizer.pad_token_id)
    model = load_causal_lm(model_dir, "float32", "sdpa")
    disable_dropout(model)
    shared = config["prefix_sharing"]
    collate = WithIds(partial(collate_prefix_shared if shared else collate_preference, pad_id=pad))
    reference, setup_s = our_reference(model, pairs, collate, config, args, work / "cache")
    if config.get("gradient_checkpointing"):
        enable_gradient_checkpointing(model)
    window = config["bucket_window"]
    consumed: list[tuple[str, int]] = []  # (objective, padded tokens) of every batch a step trained on

    class CountedBatches(CyclingBatches[Any]):
        def __init__(self, objective: str, *args: Any, **kwargs: Any):
            super().__init__(*args, **kwargs)
            self.objective = objective

        def next(self) -> dict[str, Any]:
            batch = super().next()
            consumed.append((self.objective, int(batch["input_ids"].numel())))
            return batch

    streams: dict[int, Any] = {
        0: CountedBatches("sft", sft, args.batch_size, partial(collate_sft, pad_id=pad), args.seed,
                          bucket_window=window),
        1: CountedBatches("preference", pairs, args.batch_size, collate, args.seed + 1, bucket_window=window,
                          length=prefix_shared_length if shared else None),
    }
    components: dict[int, Any] = {0: SFTComponent(), 1: PreferenceComponent(LossType("dpo"), LossParams(beta=0.1),
                                                                              reference, pad_id=pad)}
    gaps = equal_gap_optima(model, components, streams) if config["objective"] == "maxright" else (0.0, 0.0)
    order = ("sft", "preference")
    schedule = make_schedule(config["objective"], order, 0.5, args.seed, args.steps // 2, "sft",
                             dict(zip(order, gaps, strict=True)), 10)
    accelerator = make_accelerator("auto", config.get("precision", "fp32"), 1)
    optimizer = make_optimizer(model, 5e-5, 0.0)
    scheduler = make_scheduler(optimizer, "constant", 0.0, args.steps)
    model, optimizer, scheduler = accelerator.prepare(model, optimizer, scheduler)
    settings = LoopSettings(max_steps=args.steps, eval_every=10**9, save_every=10**9, log_every=10**9,
                            progress=False)
    times: list[float] = []
    step_tokens: list[dict[str, int]] = []  # padded tokens each step trained on, per objective

    class TimedTrainer(JointTrainer):
        def _refresh(self) -> None:
            began = time.perf_counter()
            super()._refresh()
            times.append(-(time.perf_counter() - began))  # folded into the next step's time

        def _train_step(self, step: int, plan: Any) -> dict[str, float]:
            began, first = time.perf_counter(), len(consumed)
            logged = super()._train_step(step, plan)
            pending = -times.pop() if times and times[-1] < 0 else 0.0
            times.append(time.perf_counter() - began + pending)
            tokens: dict[str, int] = {}
            for objective, count in consumed[first:]:
                tokens[objective] = tokens.get(objective, 0) + count
            step_tokens.append(tokens)
            return logged

    trainer = TimedTrainer(accelerator, model, optimizer, scheduler, components, streams, schedule, dict,
                           settings, work / "checkpoints", None)
    result = trainer.run()
    pref_steps = result.steps_per_objective.get("preference", 0)
    return {"step_times": times, "step_tokens": step_tokens, "setup_s": setup_s,
            "pairs_per_step": args.batch_size, "tokens_per_pair": mean_pair_tokens(pairs),
            "preference_share": pref_steps / max(1, result.steps)}


def mean_pair_tokens(pairs: list[Any]) -> float:
    """Real tokens of a pair's two sequences (prompt + chosen, prompt + rejected), averaged."""
    return sum(2 * len(p.prompt_ids) + len(p.chosen_ids) + len(p.rejected_ids) for p in pairs) / max(1, len(pairs))


# --- TRL ----------------------------------------------------------------------------------------------------


def run_trl(config: dict[str, Any], model_dir: str, args: argparse.Namespace, work: Path) -> dict[str, Any]:
    """TRL's DPOTrainer with its defaults (optionally ``precompute_ref_log_probs``), in fp32, on the same rows
    in conversational form; stops if TRL drops or truncates any of them."""
    import torch
    from datasets import Dataset
    from transformers import AutoTokenizer, TrainerCallback
    from trl import DPOConfig, DPOTrainer

    from alignment.data.readers import read_rows

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
                         precompute_ref_log_probs=config["precompute"],
                         gradient_checkpointing=config.get("gradient_checkpointing", True),
                         bf16=config.get("bf16", False),
                         use_cpu=True, report_to="none", save_strategy="no", logging_steps=10**9, disable_tqdm=True,
                         seed=args.seed)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    rows = cast(list[Any], read_rows(args.rows_file, kind="preference").rows)
    conversations = [{"prompt": [dict(m) for m in row.messages],
                      "chosen": [{"role": "assistant", "content": row.chosen}],
                      "rejected": [{"role": "assistant", "content": row.rejected}]} for row in rows]
    trainer = DPOTrainer(model=model_dir, args=dpo_args, train_dataset=Dataset.from_list(conversations),
                         processing_class=tokenizer, callbacks=[StepTimer()])
    tokenized: list[dict[str, Any]] = list(cast(Any, trainer.train_dataset))
    lengths = [len(r["prompt_ids"]) + max(len(r["chosen_ids"]), len(r["rejected_ids"])) for r in tokenized]
    if len(tokenized) != len(rows) or max(lengths) > args.max_length:
        raise SystemExit(f"TRL kept {len(tokenized)} of {len(rows)} rows, longest {max(lengths)} tokens")
    began = time.perf_counter()
    trainer.train()
    total = time.perf_counter() - began
    tokens = sum(2 * len(r["prompt_ids"]) + len(r["chosen_ids"]) + len(r["rejected_ids"]) for r in tokenized)
    return {"step_times": times, "setup_s": max(0.0, total - sum(times)), "pairs_per_step": args.batch_size,
            "tokens_per_pair": tokens / len(tokenized), "preference_share": 1.0}


# --- orchestration ------------------------------------------------------------------------------------------


def child(name: str, model_dir: str, args: argparse.Namespace) -> None:
    """Run one configuration and print its measurements as one JSON line."""
    import torch

    torch.set_num_threads(args.threads)
    config = CONFIGS[name]
    with tempfile.TemporaryDirectory() as work:
        runner = run_trl if config["kind"] == "trl" else run_ours
        measured = runner(config, model_dir, args, Path(work))
    measured["peak_rss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB
    print("RESULT " + json.dumps(measured))


def summarise(name: str, measured: dict[str, Any]) -> dict[str, Any]:
    """steps/s, samples/s (preference pairs), tokens/s and seconds per step over the timed steps."""
    timed = measured["step_times"][1:] or measured["step_times"]
    seconds = sum(timed) / len(timed)
    samples = measured["pairs_per_step"] * measured["preference_share"] / seconds
    return {"config": name, "s_per_step": seconds, "steps_per_s": 1 / seconds, "samples_per_s": samples,
            "tokens_per_s": samples * measured["tokens_per_pair"], "setup_s": measured["setup_s"],
            "peak_rss_mib": measured["peak_rss_mib"], "timed": timed,
            "timed_tokens": measured.get("step_tokens", [])[1:]}


def print_table(rows: list[dict[str, Any]]) -> None:
    header = f"{'config':28} {'s/step':>8} {'steps/s':>8} {'samples/s':>10} {'tokens/s':>10} {'setup_s':>8} {'peakRSS':>9}"
    print(header)
    print("-" * len(header))
    for r in rows:
        print(f"{r['config']:28} {r['s_per_step']:8.3f} {r['steps_per_s']:8.3f} {r['samples_per_s']:10.2f} "
              f"{r['tokens_per_s']:10.0f} {r['setup_s']:8.1f} {r['peak_rss_mib']:8.0f}M")


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


def ratios(by_name: dict[str, dict[str, Any]]) -> str:
    """The final line: throughput against TRL, joint schedules' time per step against sequential."""
    ours = by_name["ours_dpo_fastest"]["samples_per_s"]
    sequential = by_name["sequential"]
    return (f"RATIOS ours/trl_default={ours / by_name['trl_dpo_default']['samples_per_s']:.2f}x (target >=1.5) "
            f"ours/trl_precompute={ours / by_name['trl_dpo_precompute_ref']['samples_per_s']:.2f}x (target >=1.2) "
            f"ours/trl_precompute_no_gc={ours / by_name['trl_dpo_precompute_no_gc']['samples_per_s']:.2f}x "
            f"bf16: ours/trl_default={by_name['ours_dpo_fastest_bf16']['samples_per_s'] / by_name['trl_dpo_default_bf16']['samples_per_s']:.2f}x "
            f"alright/sequential={against_sequential(by_name['alright'], sequential):.2f}x (target <=1.05) "
            f"maxright/sequential={against_sequential(by_name['maxright'], sequential):.2f}x (target <=1.15) "
            f"mix/sequential={against_sequential(by_name['mix'], sequential):.2f}x "
            "(per step, for the same objectives)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="smoke run: few rows, few steps, short sequences")
    parser.add_argument("--rows", type=int, default=160)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--max-length", type=int, default=256)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--configs", default=",".join(CONFIGS), help="comma-separated subset")
    parser.add_argument("--child", default="", help=argparse.SUPPRESS)
    parser.add_argument("--model-dir", default="", help=argparse.SUPPRESS)
    parser.add_argument("--rows-file", default="", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.quick:
        args.rows, args.steps, args.batch_size, args.max_length = 16, 4, 4, 128
    if args.child:
        child(args.child, args.model_dir, args)
        return
    names = [n for n in args.configs.split(",") if n]
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = Path(tmp) / "model"
        prepare_model(model_dir, args.seed)
        rows_file = Path(tmp) / "rows.jsonl"
        select_rows(model_dir, args.rows, args.max_length, rows_file)
        rows = []
        for name in names:
            command = [sys.executable, __file__, "--child", name, "--model-dir", str(model_dir), "--rows-file", str(rows_file), "--rows",
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
