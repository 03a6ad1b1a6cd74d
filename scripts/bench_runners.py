"""The two trainers the training benchmark times (scripts/bench_train.py): ours (the JointTrainer loop, with the
reference cache, prefix sharing, bucketing, gradient checkpointing and LoRA as configured) and TRL's DPOTrainer
(defaults, optionally precomputed reference log-probs and LoRA), plus the benchmark's data: HH-RLHF rows that
fit the max length whole. Each returns per-step wall times, setup seconds and the end of its first optimizer step.
"""

from __future__ import annotations

import argparse
import json
import time
from functools import partial
from pathlib import Path
from typing import Any, cast

HH_TRAIN = Path(__file__).resolve().parents[2] / "shared" / "data" / "hh_rlhf" / "train.jsonl"
TOKENIZER_TEXT_ROWS = 1000  # raw HH rows the benchmark tokenizer is trained on
LORA: dict[str, Any] = {"r": 16, "alpha": 32, "dropout": 0.0}  # both tools: every linear layer but the head


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


def args_allow_truncation(rows_file: str) -> bool:
    """The time-to-first-step run reads the first N raw rows (truncated as training would); the throughput
    comparison reads rows that fit whole, and any truncation there is an error."""
    return Path(rows_file).name.startswith("raw-")


def load_our_data(model_dir: str, rows_file: str, max_length: int,
                  with_sft: bool) -> tuple[Any, list[Any], list[Any]]:
    """Tokenizer, the rows' preference pairs and (``with_sft``) SFT examples (prompt + chosen)."""
    from alignment.data.readers import read_rows
    from alignment.data.rows import PreferenceRow, SFTRow
    from alignment.data.tokenize import tokenize_dataset
    from alignment.models.loading import load_tokenizer

    tokenizer = load_tokenizer(model_dir)
    rows = read_rows(rows_file, kind="preference").rows
    pairs, stats = tokenize_dataset(tokenizer, rows, max_length=max_length)
    if (stats.truncated or stats.kept != len(rows)) and not args_allow_truncation(rows_file):
        raise SystemExit(f"{rows_file}: {stats.truncated} rows truncated, {len(rows) - stats.kept} dropped")
    if not with_sft:  # a preference-only run tokenizes what it trains on, as a real run's data stage does
        return tokenizer, pairs, []
    sft_rows = [SFTRow(row.id, row.messages, row.chosen) for row in rows if isinstance(row, PreferenceRow)]
    sft, _ = tokenize_dataset(tokenizer, sft_rows, max_length=max_length)
    return tokenizer, pairs, sft


def our_reference(model: Any, pairs: list[Any], collate: Any, config: dict[str, Any], args: argparse.Namespace,
                  cache_dir: Path) -> tuple[Any, float]:
    """The live reference (a frozen copy, or with LoRA the base with adapters disabled), or the reference cache
    over it: ``ref_cache="eager"`` computes every pair before training (setup seconds; a frozen copy is then
    freed), ``"lazy"`` computes each pair the first time a batch uses it."""
    from alignment.models.loading import frozen_copy
    from alignment.train.components import adapter_disabled_reference, model_reference
    from alignment.train.ref_store import LazyCachedReference, ShardStore, store_key

    live = adapter_disabled_reference(model) if args.lora else model_reference(frozen_copy(model))
    if not config["ref_cache"]:
        return live, 0.0
    store = ShardStore(cache_dir, store_key("bench", "bench", {"rows": args.rows, "max_length": args.max_length}))
    cache = LazyCachedReference(live, store, pairs, collate)
    if config["ref_cache"] == "lazy":
        return cache, 0.0
    began = time.perf_counter()
    cache.prefetch(pairs, args.batch_size, progress=False)
    cache.drop_reference()
    return cache, time.perf_counter() - began


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
    from alignment.models.loading import (
        LoraSpec,
        add_lora,
        disable_dropout,
        enable_gradient_checkpointing,
        load_causal_lm,
    )
    from alignment.objectives import make_schedule
    from alignment.train.batches import CyclingBatches, WithIds, prefix_shared_length
    from alignment.train.components import PreferenceComponent, SFTComponent
    from alignment.train.loop import JointTrainer, LoopSettings
    from alignment.train.setup import make_accelerator, make_optimizer, make_scheduler

    torch.manual_seed(args.seed)
    tokenizer, pairs, sft = load_our_data(model_dir, args.rows_file, args.max_length,
                                          with_sft=config["objective"] != "preference")
    pad = int(tokenizer.pad_token_id)
    model = load_causal_lm(model_dir, "float32", "sdpa")
    disable_dropout(model)
    if config.get("gradient_checkpointing"):
        enable_gradient_checkpointing(model)
    if args.lora:
        model = add_lora(model, LoraSpec(**LORA))
    shared = config["prefix_sharing"]
    collate = WithIds(partial(collate_prefix_shared if shared else collate_preference, pad_id=pad))
    training_starts = time.perf_counter()  # model and data loaded; the reference pass (if any) is next
    reference, setup_s = our_reference(model, pairs, collate, config, args, work / "cache")
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
        1: CountedBatches("preference", pairs, args.batch_size, collate, args.seed + 1, bucket_window=window,
                          length=prefix_shared_length if shared else None),
    }
    if sft:
        streams[0] = CountedBatches("sft", sft, args.batch_size, partial(collate_sft, pad_id=pad), args.seed,
                                    bucket_window=window)
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
    first_step_end: list[float] = []
    step_tokens: list[dict[str, int]] = []  # padded tokens each step trained on, per objective

    class TimedTrainer(JointTrainer):
        def _train_step(self, step: int) -> dict[str, float]:  # a MAXRIGHT refresh runs inside the step
            began, first = time.perf_counter(), len(consumed)
            logged = super()._train_step(step)
            times.append(time.perf_counter() - began)
            if not first_step_end:
                first_step_end.append(time.perf_counter())
            tokens: dict[str, int] = {}
            for objective, count in consumed[first:]:
                tokens[objective] = tokens.get(objective, 0) + count
            step_tokens.append(tokens)
            return logged

    trainer = TimedTrainer(accelerator, model, optimizer, scheduler, components, streams, schedule, dict,
                           settings, work / "checkpoints", None)
    result = trainer.run()
    pref_steps = result.steps_per_objective.get("preference", 0)
    return {"step_times": times, "step_tokens": step_tokens, "setup_s": setup_s, "first_step_end": first_step_end[0],
            "training_to_first_step_s": first_step_end[0] - training_starts,
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
    first_step_end: list[float] = []

    class StepTimer(TrainerCallback):  # type: ignore[misc]
        began = 0.0

        def on_step_begin(self, *_: Any, **__: Any) -> None:
            self.began = time.perf_counter()

        def on_step_end(self, *_: Any, **__: Any) -> None:
            times.append(time.perf_counter() - self.began)
            if not first_step_end:
                first_step_end.append(time.perf_counter())

    dpo_args = DPOConfig(output_dir=str(work / "trl"), per_device_train_batch_size=args.batch_size,
                         max_steps=args.steps, max_length=args.max_length, learning_rate=5e-5,
                         precompute_ref_log_probs=config["precompute"],
                         gradient_checkpointing=config.get("gradient_checkpointing", True),
                         bf16=config.get("bf16", False),
                         use_cpu=True, report_to="none", save_strategy="no", logging_steps=10**9, disable_tqdm=True,
                         seed=args.seed, model_init_kwargs={"dtype": "float32"})
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    rows = cast(list[Any], read_rows(args.rows_file, kind="preference").rows)
    conversations = [{"prompt": [dict(m) for m in row.messages],
                      "chosen": [{"role": "assistant", "content": row.chosen}],
                      "rejected": [{"role": "assistant", "content": row.rejected}]} for row in rows]
    peft_config = None
    if args.lora:
        from peft import LoraConfig

        peft_config = LoraConfig(r=LORA["r"], lora_alpha=LORA["alpha"], lora_dropout=LORA["dropout"],
                                 target_modules="all-linear", task_type="CAUSAL_LM")
    trainer = DPOTrainer(model=model_dir, args=dpo_args, train_dataset=Dataset.from_list(conversations),
                         processing_class=tokenizer, callbacks=[StepTimer()], peft_config=peft_config)
    tokenized: list[dict[str, Any]] = list(cast(Any, trainer.train_dataset))
    lengths = [len(r["prompt_ids"]) + max(len(r["chosen_ids"]), len(r["rejected_ids"])) for r in tokenized]
    if len(tokenized) != len(rows) or max(lengths) > args.max_length:
        raise SystemExit(f"TRL kept {len(tokenized)} of {len(rows)} rows, longest {max(lengths)} tokens")
    began = time.perf_counter()
    trainer.train()
    total = time.perf_counter() - began
    tokens = sum(2 * len(r["prompt_ids"]) + len(r["chosen_ids"]) + len(r["rejected_ids"]) for r in tokenized)
    return {"step_times": times, "setup_s": max(0.0, total - sum(times)), "first_step_end": first_step_end[0],
            "pairs_per_step": args.batch_size,
            "tokens_per_pair": tokens / len(tokenized), "preference_share": 1.0}
