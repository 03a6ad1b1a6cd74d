"""``stage=train_rm``: a Bradley-Terry reward model trained on preference pairs (``data.preference``, held out:
``data.preference_eval``) from any causal-LM directory, with LoRA or full fine-tuning, in the one training loop.

The model is the causal LM's body with a scalar ``score`` head on each row's last non-padding token
(:func:`alignment.models.reward.build_reward_model`); a pair is encoded exactly as preference training encodes
it (prompt with the chat template's generation prompt, response, EOS), which is also ``ranker=reward_model``'s
default encoding. Training is a single objective schedule of :class:`alignment.train.reward.RewardComponent`
through :class:`alignment.train.loop.JointTrainer`: checkpoints, exact resume, ``logs/metrics.jsonl`` and the
progress bar are the loop's. Every rank evaluates the whole held-out set (at most ``stage.train.eval_max_rows``
pairs), so the bootstrap interval needs no gathering.

Outputs: ``model/`` (a plain sequence-classification directory, LoRA merged, loadable with
``AutoModelForSequenceClassification``); manifest metrics: held-out pairwise accuracy with its bootstrap CI
(before and after training), mean margin, reward mean/std, train seconds, seconds per step, data statistics.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable, Sequence
from functools import partial
from typing import Any

from pipeline.artifacts import StageInput
from pipeline.layout import Files
from pipeline.protocol import StageContext, StageResult
from pipeline.rounds import resolve_model_ref
from stages.builders.data import load_rows
from stages.builders.paths import dataset_path, layout, model_path
from stages.builders.training import training_accelerator
from stages.config.run_config import RunConfig

STAGE_VERSION = 1
DISTRIBUTED = True  # every torchrun rank takes part
node_worker = None
DATA_SLOTS = ("preference", "preference_eval")
MARGIN_FIELD = "margin"


def base_model_input(run: RunConfig) -> StageInput:
    """The causal LM the reward model starts from: ``stage.base_model``, or the run's base model."""
    spec = run.stage.base_model
    return resolve_model_ref(spec, layout(run), run.round) if spec else StageInput(model_path(run))


def inputs(run: RunConfig) -> dict[str, StageInput]:
    found = {"base_model": base_model_input(run)}
    for slot in DATA_SLOTS:
        found[f"data.{slot}"] = StageInput(dataset_path(run, getattr(run.data, slot)))
    return found


# --- data -----------------------------------------------------------------------------------------------------


def data_half(rows: Sequence[Any], half: str) -> list[Any]:
    """All ``rows``, or their ``first`` or ``second`` half in order (the first half has the extra odd row)."""
    middle = (len(rows) + 1) // 2
    return list(rows) if half == "all" else list(rows[:middle] if half == "first" else rows[middle:])


def pair_margins(rows: Sequence[Any], source: str) -> dict[str, float] | None:
    """Each pair's ``margin`` column by row id; None when no row carries one. A column that only some rows
    carry, or that is not a number, is an error naming the row."""
    carrying = [row for row in rows if MARGIN_FIELD in row.meta]
    if not carrying:
        return None
    margins: dict[str, float] = {}
    for index, row in enumerate(rows, start=1):
        value = row.meta.get(MARGIN_FIELD)
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            what = "has no" if value is None else f"has a non-numeric ({value!r})"
            raise ValueError(f"{source} row {index} (id {row.id}): {what} field '{MARGIN_FIELD}' while "
                             f"{len(carrying)} of {len(rows)} rows carry one (stage.margin=true needs it on every "
                             "row, or stage.margin=false)")
        margins[row.id] = float(value)
    return margins


def load_pairs(run: RunConfig, tokenizer: Any) -> tuple[dict[str, list[Any]], dict[str, Any], dict[str, float] | None]:
    """Tokenized train and held-out pairs, their statistics, and the train pairs' margins (None: no margin)."""
    from alignment.data.tokenize import tokenize_dataset

    examples: dict[str, list[Any]] = {}
    stats: dict[str, Any] = {}
    margins = None
    for slot in DATA_SLOTS:
        read = load_rows(run, getattr(run.data, slot), "preference")
        rows = data_half(read.rows, run.stage.data_half) if slot == "preference" else read.rows
        examples[slot], tokenized = tokenize_dataset(tokenizer, rows, max_length=run.data.max_length,
                                                     truncation=run.data.truncation)
        stats[slot] = {**read.counts(), **tokenized.to_dict()}
        if slot == "preference":
            stats[slot]["data_half"] = run.stage.data_half
            if run.stage.margin:
                margins = pair_margins(rows, read.source)
                stats[slot]["margin"] = "per-pair column" if margins is not None else "none (no row carries one)"
        if not examples[slot]:
            raise ValueError(f"data.{slot} ({read.source}) has no usable preference pairs (statistics: "
                             f"{stats[slot]})")
    return examples, stats, margins


class WithMargins:
    """A collate function that also puts each pair's margin in the batch (``batch["margin"] [B]``), joined by
    the pairs' ids."""

    def __init__(self, collate: Callable[[list[Any]], dict[str, Any]], margins: dict[str, float]):
        self.collate, self.margins = collate, margins

    def __call__(self, pairs: list[Any]) -> dict[str, Any]:
        import torch

        batch = dict(self.collate(pairs))
        batch["margin"] = torch.tensor([self.margins[pair.id] for pair in pairs], dtype=torch.float32)
        return batch


def pair_collate(tokenizer: Any, margins: dict[str, float] | None) -> Any:
    """``collate_preference`` (chosen rows, then rejected rows) with the pair ids, and margins when given."""
    from alignment.data.collate import collate_preference
    from alignment.train.batches import WithIds

    collate = WithIds(partial(collate_preference, pad_id=int(tokenizer.pad_token_id)))
    return collate if margins is None else WithMargins(collate, margins)


def dry_run(run: RunConfig, stage_inputs: dict[str, str]) -> dict[str, Any]:
    """Validate, read and tokenize the pairs, print statistics and one encoded pair; train nothing."""
    from alignment.data.tokenize import preview
    from alignment.models.loading import load_tokenizer

    tokenizer = load_tokenizer(stage_inputs["base_model"], run.model.trust_remote_code)
    examples, stats, margins = load_pairs(run, tokenizer)
    for slot, slot_stats in stats.items():
        print(f"[dry run] {slot}: {slot_stats}")
    pair = examples["preference"][0]
    read_at = ("the last response token (the tokenizer pads with its EOS, so the final EOS counts as padding)"
               if tokenizer.pad_token_id == tokenizer.eos_token_id else "the final EOS")
    print(f"[dry run] one encoded pair ({len(pair.prompt_ids)} prompt + {len(pair.chosen_ids)} chosen / "
          f"{len(pair.rejected_ids)} rejected tokens; the reward is read at {read_at}; responses in [[...]]):\n"
          f"{preview(tokenizer, pair)}")
    if margins is not None:
        print(f"[dry run] its margin: {margins[pair.id]}")
    print("[dry run] configuration valid; no training done (dry_run=true)")
    return {"data": stats}


# --- training -------------------------------------------------------------------------------------------------


def build_model(run: RunConfig, path: str, tokenizer: Any) -> Any:
    """The reward model from ``path``: dropout off, gradient checkpointing and LoRA as configured."""
    from alignment.models.loading import LoraSpec, disable_dropout, enable_gradient_checkpointing
    from alignment.models.reward import add_reward_lora, build_reward_model

    cfg = run.model
    model = build_reward_model(path, tokenizer, cfg.dtype, attn_implementation=cfg.attn_implementation, seed=run.seed)
    disable_dropout(model)  # as TRL's RewardTrainer does by default: the same input gives the same reward
    if run.stage.train.gradient_checkpointing:
        enable_gradient_checkpointing(model)
    if cfg.lora.enabled:
        lora = cfg.lora
        model = add_reward_lora(model, LoraSpec(lora.r, lora.alpha, lora.dropout, list(lora.target_modules)))
    return model


def run(run: RunConfig, ctx: StageContext) -> StageResult:
    import torch

    from alignment.models.loading import load_tokenizer
    from alignment.models.reward import save_reward_model
    from alignment.objectives import SingleObjective
    from alignment.train.batches import CyclingBatches
    from alignment.train.loop import JointTrainer, LoopSettings
    from alignment.train.metrics_log import MetricsLog
    from alignment.train.reward import RewardComponent, evaluate_reward_model
    from alignment.train.setup import make_optimizer, make_scheduler

    stage, train = run.stage, run.stage.train
    accelerator = training_accelerator(run, str(ctx.logs_dir), micro_batch_size=train.pref_batch_size)
    torch.manual_seed(run.seed)
    tokenizer = load_tokenizer(ctx.inputs["base_model"], run.model.trust_remote_code)
    examples, data_stats, margins = load_pairs(run, tokenizer)
    model = build_model(run, ctx.inputs["base_model"], tokenizer)
    stream = CyclingBatches(examples["preference"], train.pref_batch_size, pair_collate(tokenizer, margins),
                            run.seed + 1000, num_replicas=accelerator.num_processes, rank=accelerator.process_index,
                            bucket_window=train.bucket_window)
    optimizer = make_optimizer(model, train.lr, train.weight_decay)
    scheduler = make_scheduler(optimizer, train.schedule, train.warmup_ratio, train.max_steps)
    model, optimizer, scheduler = accelerator.prepare(model, optimizer, scheduler)
    heldout_pairs = examples["preference_eval"][: train.eval_max_rows]
    collate = pair_collate(tokenizer, None)
    heldout = [collate(heldout_pairs[i:i + train.pref_batch_size])
               for i in range(0, len(heldout_pairs), train.pref_batch_size)]

    def evaluate() -> dict[str, float]:
        found = evaluate_reward_model(model, heldout, seed=run.seed, progress=run.stage.progress)
        return {f"eval/{key}": value for key, value in found.items()}

    settings = LoopSettings(max_steps=train.max_steps, grad_accum=train.grad_accum, max_grad_norm=train.max_grad_norm,
                            eval_every=train.eval_every, save_every=train.save_every,
                            keep_checkpoints=train.keep_checkpoints, log_every=stage.log_every,
                            progress=stage.progress)
    component = RewardComponent(center_rewards_coefficient=stage.center_rewards_coefficient)
    trackers = [accelerator] if run.tracking.backends else []
    with MetricsLog(ctx.logs_dir / Files.METRICS, trackers=trackers) as metrics_log:
        result = JointTrainer(accelerator, model, optimizer, scheduler, {0: component}, {0: stream},
                              SingleObjective(0), evaluate, settings, ctx.work_dir / Files.CHECKPOINTS,
                              metrics_log if accelerator.is_main_process else None).run()
    accelerator.wait_for_everyone()
    metrics: dict[str, Any] = {}
    if accelerator.is_main_process:
        save_reward_model(accelerator.unwrap_model(model), tokenizer, ctx.work_dir / Files.MODEL, overwrite=True)
        metrics = summary(result, data_stats, run, accelerator.num_processes)
        shutil.rmtree(ctx.work_dir / Files.CHECKPOINTS, ignore_errors=True)  # the artifact is complete: no resume
    for tracker in accelerator.trackers:  # not end_training(): it would tear down the runner's process group
        tracker.finish()
    return StageResult(outputs=[Files.MODEL], metrics=metrics)


def _accuracy(evaluation: dict[str, float]) -> dict[str, float]:
    """The held-out accuracy of one eval point in the estimate form reports use (``value``, ``ci_low``...)."""
    return {"value": evaluation["eval/accuracy"], "ci_low": evaluation["eval/accuracy_ci_low"],
            "ci_high": evaluation["eval/accuracy_ci_high"], "n": int(evaluation["eval/pairs"]), "confidence": 0.95}


def summary(result: Any, data_stats: dict[str, Any], run: RunConfig, processes: int) -> dict[str, Any]:
    """Manifest metrics: the final held-out numbers, accuracy before/after with CIs, timing, data statistics."""
    final, first = result.evals[-1], result.evals[0]
    return {
        **{key: value for key, value in final.items() if key.startswith("eval/")},
        "heldout_accuracy": _accuracy(final),
        "heldout_accuracy_before": _accuracy(first),
        "heldout_margin": final["eval/margin"],
        "reward_mean": final["eval/reward_mean"],
        "reward_std": final["eval/reward_std"],
        "steps": result.steps,
        "stop_reason": result.stop_reason,
        "train_seconds": round(result.seconds, 3),
        "seconds_per_step": round(result.seconds_per_step, 5),
        "processes": processes,
        "lora": run.model.lora.enabled,
        "margin": data_stats["preference"].get("margin", "none (stage.margin=false)"),
        "center_rewards_coefficient": run.stage.center_rewards_coefficient,
        "data": data_stats,
    }
