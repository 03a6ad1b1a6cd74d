"""``stage=joint_train``: SFT and a preference objective trained jointly (ALRIGHT, MAXRIGHT, mix, sequential
or a single objective), with full fine-tuning or LoRA, on accelerate/DeepSpeed.

Outputs: ``model/`` (HF directory: full weights, or the LoRA adapter plus ``model/merged`` by option),
``loss_space.png``, ``logs/metrics.jsonl``; manifest metrics include the held-out losses and their best values
(read by later MAXRIGHT runs as f*), steps per objective and time per optimizer step.
"""

from __future__ import annotations

import shutil
from typing import Any

from pipeline.artifacts import StageInput
from pipeline.layout import Files
from pipeline.protocol import StageContext, StageResult
from stages.builders.data import load_tokenized
from stages.builders.paths import dataset_path, policy_input, reference_input
from stages.builders.training import (
    build_components,
    build_schedule,
    cached_reference,
    eval_batches,
    optima,
    verifier_report,
    verifier_tasks_path,
)
from stages.config.run_config import RunConfig

STAGE_VERSION = 1
DISTRIBUTED = True  # every torchrun rank takes part
node_worker = None
DATA_SLOTS = {"sft": "sft", "preference": "preference", "sft_eval": "sft", "preference_eval": "preference"}


def inputs(run: RunConfig) -> dict[str, StageInput]:
    """The policy, the four datasets, and any reference/teacher/optima artifacts and verifier tasks."""
    found = {"policy": policy_input(run)}
    for slot in DATA_SLOTS:
        found[f"data.{slot}"] = StageInput(dataset_path(run, getattr(run.data, slot)))
    reference = reference_input(run, run.stage.reference)
    if reference is not None:
        found["reference"] = reference
    if "kd" in run.objective.objectives:
        found["teacher"] = StageInput(run.objective.teacher)
    for index, path in enumerate(run.objective.optima_from):
        found[f"optima.{index}"] = StageInput(path)
    tasks = verifier_tasks_path(run)
    if tasks is not None:
        found["data.eval_tasks"] = StageInput(tasks)
    return found


def _load_data(run: RunConfig, tokenizer: Any) -> tuple[dict[str, list[Any]], dict[str, Any]]:
    examples, stats = {}, {}
    for slot, kind in DATA_SLOTS.items():
        examples[slot], stats[slot] = load_tokenized(run, getattr(run.data, slot), kind, tokenizer)
    for slot in ("sft", "preference"):
        if slot in run.objective.objectives and not examples[slot]:
            raise ValueError(f"data.{slot} ({stats[slot]['source']}) has no usable {slot} rows to train on "
                             f"(statistics: {stats[slot]}); for a round's pairs, the ranker found no pair: "
                             f"more prompts or samples (generate.n), or a lower rank.min_margin")
    return examples, stats


def dry_run(run: RunConfig, stage_inputs: dict[str, str]) -> dict[str, Any]:
    """Validate, read and tokenize the data, print statistics and one marked-up example; train nothing."""
    from alignment.data.tokenize import preview
    from alignment.models.loading import load_tokenizer

    tokenizer = load_tokenizer(stage_inputs["policy"], run.model.trust_remote_code)
    examples, stats = _load_data(run, tokenizer)
    for slot, slot_stats in stats.items():
        print(f"[dry run] {slot}: {slot_stats}")
    for slot in ("sft", "preference"):
        if examples[slot]:
            # An untruncated example shows the whole chat template, end-of-turn tokens included.
            shown = next((ex for ex in examples[slot] if not ex.truncated), examples[slot][0])
            print(f"[dry run] one {slot} example (loss-masked span in [[...]]):\n{preview(tokenizer, shown)}")
    print("[dry run] configuration valid; no training done (dry_run=true)")
    return {"data": stats}


def run(run: RunConfig, ctx: StageContext) -> StageResult:
    import torch

    from alignment.evaluation.heldout import evaluate_heldout
    from alignment.evaluation.plots import plot_loss_space
    from alignment.models.loading import load_tokenizer, save_trained
    from alignment.train.loop import JointTrainer, LoopSettings
    from alignment.train.metrics_log import MetricsLog
    from alignment.train.setup import make_optimizer, make_scheduler
    from stages.builders.training import build_policy, training_accelerator

    stage, train = run.stage, run.stage.train
    accelerator = training_accelerator(run, str(ctx.logs_dir), micro_batch_size=train.sft_batch_size)
    torch.manual_seed(run.seed)
    tokenizer = load_tokenizer(ctx.inputs["policy"], run.model.trust_remote_code)
    examples, data_stats = _load_data(run, tokenizer)
    model, reference_fn, reference_kind = build_policy(run, ctx.inputs)
    reference_fingerprint = ctx.fingerprints.get("reference", ctx.fingerprints.get("policy", ""))
    reference_fn, cache = cached_reference(run, reference_fingerprint, examples, tokenizer, reference_fn,
                                           accelerator)
    components, streams, preference = build_components(run, ctx.inputs, examples, tokenizer, reference_fn,
                                                       accelerator)
    best = optima(run)
    schedule = build_schedule(run, streams, best)
    optimizer = make_optimizer(model, train.lr, train.weight_decay)
    scheduler = make_scheduler(optimizer, train.schedule, train.warmup_ratio, train.max_steps)
    model, optimizer, scheduler = accelerator.prepare(model, optimizer, scheduler)
    sft_eval, pref_eval = eval_batches(run, examples, tokenizer, accelerator)

    def evaluate() -> dict[str, float]:
        return evaluate_heldout(model, sft_eval, pref_eval, preference,
                                lambda t: accelerator.reduce(t.to(accelerator.device), reduction="sum").cpu(),
                                progress=stage.progress and accelerator.is_main_process)

    settings = LoopSettings(
        max_steps=train.max_steps, grad_accum=train.grad_accum, max_grad_norm=train.max_grad_norm,
        eval_every=train.eval_every, save_every=train.save_every, keep_checkpoints=train.keep_checkpoints,
        log_every=stage.log_every, early_stop_eps=stage.early_stop_eps, optima=(best.get("sft"), best.get("preference")),
        ref_pareto=[(p[0], p[1]) for p in stage.ref_pareto], progress=stage.progress,
    )
    trackers = [accelerator] if run.tracking.backends else []
    with MetricsLog(ctx.logs_dir / Files.METRICS, trackers=trackers) as metrics_log:
        result = JointTrainer(accelerator, model, optimizer, scheduler, components, streams, schedule, evaluate,
                              settings, ctx.work_dir / Files.CHECKPOINTS,
                              metrics_log if accelerator.is_main_process else None).run()
    accelerator.wait_for_everyone()
    outputs = [Files.MODEL]
    metrics: dict[str, Any] = {}
    if accelerator.is_main_process:
        trained = accelerator.unwrap_model(model)
        save_trained(trained, tokenizer, ctx.work_dir / Files.MODEL, merged=stage.save_merged)
        plot_loss_space({run.objective.name: result.evals}, ctx.work_dir / Files.LOSS_SPACE_PLOT,
                        ideal=(best.get("sft"), best.get("preference")),
                        title=f"{run.objective.name} (λ={run.objective.lambd}, loss={run.loss.name})")
        outputs.append(Files.LOSS_SPACE_PLOT)
        if cache is not None:
            reference_kind = f"{reference_kind}; {cache.describe()}"
        metrics = _summary(result, data_stats, reference_kind, accelerator.num_processes)
        if cache is not None:
            metrics["reference_cache"] = cache.report()
        if "data.eval_tasks" in ctx.inputs:
            metrics.update(verifier_report(ctx.inputs["data.eval_tasks"], str(ctx.work_dir / Files.MODEL),
                                           ctx.inputs["policy"]))
        shutil.rmtree(ctx.work_dir / Files.CHECKPOINTS, ignore_errors=True)  # the artifact is complete: no resume
    for tracker in accelerator.trackers:  # not end_training(): it would tear down the runner's process group
        tracker.finish()
    return StageResult(outputs=outputs, metrics=metrics)


def _summary(result: Any, data_stats: dict[str, Any], reference_kind: str, processes: int) -> dict[str, Any]:
    final = result.evals[-1] if result.evals else {}
    best: dict[str, float] = {}
    for key in ("eval/sft_loss", "eval/pref_loss"):
        values = [e[key] for e in result.evals if key in e]
        if values:
            best[f"{key}_best"] = min(values)
    return {
        **{k: v for k, v in final.items() if k.startswith("eval/")},
        **best,
        "steps": result.steps,
        "stop_reason": result.stop_reason,
        "steps_per_objective": result.steps_per_objective,
        "train_seconds": round(result.seconds, 3),
        "seconds_per_step": round(result.seconds_per_step, 5),
        "reference": reference_kind,
        "processes": processes,
        "data": data_stats,
    }
