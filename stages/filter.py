"""``stage=filter``: bilevel selection of ``data.candidates`` rows against the golden set ``data.golden``.

A selector logit per candidate row id is learned with the penalty method of :mod:`alignment.filtering.selector`
(value-function term through a proxy copy of the policy), then a keep rule picks the rows.

Outputs: ``selection.jsonl`` (``{id, weight, kept}`` per scored candidate), ``filtered.jsonl`` (the kept rows in
the input row format: train on them with ``data.sft.path=round:filter/filtered.jsonl``), ``weights.png`` (weight histogram, clean vs corrupted when rows carry
``meta.corrupted``), ``logs/metrics.jsonl``; manifest metrics: kept count, AUROC / precision / recall against
the noise labels when present (and AUROC per noise kind when rows name it in ``meta.corruption``), time.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

from pipeline.artifacts import StageInput
from pipeline.layout import Files
from pipeline.protocol import StageContext, StageResult
from stages.builders.data import load_rows
from stages.builders.paths import dataset_path, policy_input, reference_input
from stages.config.run_config import RunConfig

STAGE_VERSION = 2  # 2: selection_pass<p>.jsonl after each pass when epochs > 1
DISTRIBUTED = False
node_worker = None


def inputs(run: RunConfig) -> dict[str, StageInput]:
    """The policy, the golden set, the candidate pool and a separate reference model if one is named."""
    found = {"policy": policy_input(run), "data.golden": StageInput(dataset_path(run, run.data.golden)),
             "data.candidates": StageInput(dataset_path(run, run.data.candidates))}
    reference = reference_input(run, run.stage.reference)
    if run.stage.kind == "preference" and reference is not None:  # read by build_policy
        found["reference"] = reference
    return found


def _load(run: RunConfig, tokenizer: Any) -> dict[str, Any]:
    """Rows and tokenized examples of the golden set and the candidate pool."""
    from alignment.data.tokenize import tokenize_dataset

    loaded: dict[str, Any] = {}
    for slot in ("golden", "candidates"):
        result = load_rows(run, getattr(run.data, slot), run.stage.kind)
        examples, stats = tokenize_dataset(tokenizer, result.rows, max_length=run.data.max_length,
                                           truncation=run.data.truncation)
        if not examples:
            raise ValueError(f"{result.source}: no usable {run.stage.kind} rows for data.{slot}")
        loaded[slot] = {"rows": result.rows, "examples": examples,
                        "stats": {**result.counts(), **stats.to_dict()}}
    return loaded


def dry_run(run: RunConfig, stage_inputs: dict[str, str]) -> dict[str, Any]:
    """Read and tokenize both datasets and print their statistics; train nothing."""
    from alignment.models.loading import load_tokenizer

    tokenizer = load_tokenizer(stage_inputs["policy"], run.model.trust_remote_code)
    loaded = _load(run, tokenizer)
    for slot, data in loaded.items():
        print(f"[dry run] {slot}: {data['stats']}")
    print("[dry run] configuration valid; no selection done (dry_run=true)")
    return {"data": {slot: data["stats"] for slot, data in loaded.items()}}


def _policy_and_losses(run: RunConfig, stage_inputs: dict[str, str], tokenizer: Any) -> tuple[Any, Any]:
    """The trainable policy θ and the per-example loss function of ``stage.kind``."""
    from alignment.filtering.bilevel import preference_example_losses, sft_example_losses
    from alignment.models.loading import LoraSpec, add_lora, disable_dropout, load_causal_lm
    from stages.builders.training import build_policy, preference_component

    if run.stage.kind == "preference":
        model, reference_fn, _ = build_policy(run, stage_inputs)
        return model, preference_example_losses(preference_component(run, reference_fn, tokenizer))
    cfg = run.model
    model = load_causal_lm(stage_inputs["policy"], cfg.dtype, cfg.attn_implementation, cfg.trust_remote_code)
    disable_dropout(model)
    if cfg.lora.enabled:
        model = add_lora(model, LoraSpec(cfg.lora.r, cfg.lora.alpha, cfg.lora.dropout, list(cfg.lora.target_modules)))
    return model, sft_example_losses


def _streams(run: RunConfig, loaded: dict[str, Any], tokenizer: Any) -> tuple[Any, Any]:
    from alignment.data.collate import collate_preference, collate_sft
    from alignment.train.batches import CyclingBatches, WithIds

    pad = int(tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id)
    collate = WithIds(partial(collate_sft if run.stage.kind == "sft" else collate_preference, pad_id=pad))
    stage = run.stage
    golden = CyclingBatches(loaded["golden"]["examples"], stage.golden_batch_size, collate, run.seed + 1)
    candidates = CyclingBatches(loaded["candidates"]["examples"], stage.batch_size, collate, run.seed + 2)
    return golden, candidates


@dataclass
class SelectionSetup:
    """What one selection run needs, built from the run config: the policy θ, its proxy θ' (None without the
    value-function term), the selector, the golden and candidate batch streams, the per-example loss, the
    optimisation settings, and the loaded rows (``loaded[slot] = {"rows", "examples", "stats"}``)."""

    model: Any
    proxy: Any | None
    selector: Any
    golden: Any
    candidates: Any
    loss_fn: Any
    settings: Any
    loaded: dict[str, Any]


def build_selection(run: RunConfig, stage_inputs: dict[str, str]) -> SelectionSetup:
    """Load data and models and build a :class:`SelectionSetup` (seeded with ``run.seed``; on the GPU if any)."""
    import torch

    from alignment.filtering.bilevel import BilevelSettings
    from alignment.filtering.selector import Selector
    from alignment.models.loading import load_tokenizer

    stage = run.stage
    torch.manual_seed(run.seed)
    tokenizer = load_tokenizer(stage_inputs["policy"], run.model.trust_remote_code)
    loaded = _load(run, tokenizer)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model, loss_fn = _policy_and_losses(run, stage_inputs, tokenizer)
    model.to(device)
    proxy = copy.deepcopy(model) if stage.value_function else None
    selector = Selector([e.id for e in loaded["candidates"]["examples"]], stage.activation).to(device)
    golden, candidates = _streams(run, loaded, tokenizer)
    steps_per_epoch = len(candidates.sampler)
    settings = BilevelSettings(
        steps=stage.max_steps or stage.epochs * steps_per_epoch, steps_per_epoch=steps_per_epoch, lr=stage.lr,
        proxy_lr=stage.proxy_lr or stage.lr, selector_lr=stage.selector_lr,
        selector_optimizer=stage.selector_optimizer, rho=stage.rho, rho_decay=stage.rho_decay,
        rho_min=stage.rho_min, value_function=stage.value_function, max_grad_norm=stage.max_grad_norm,
        log_every=stage.log_every)
    return SelectionSetup(model, proxy, selector, golden, candidates, loss_fn, settings, loaded)


def run(run: RunConfig, ctx: StageContext) -> StageResult:
    import torch

    from alignment.data.readers import write_jsonl
    from alignment.filtering.bilevel import train_selector
    from alignment.train.metrics_log import MetricsLog

    stage = run.stage
    if stage.num_threads:
        torch.set_num_threads(stage.num_threads)
    setup = build_selection(run, ctx.inputs)
    passes = -(-setup.settings.steps // setup.settings.steps_per_epoch)
    snapshots: list[str] = []

    def snapshot(done: int) -> None:
        """The weights after each pass of a multi-pass run, to see selection quality grow with passes."""
        if passes > 1:
            snapshots.append(Files.SELECTION_PASS.format(done))
            write_jsonl(ctx.work_dir / snapshots[-1],
                        [{"id": i, "weight": w} for i, w in setup.selector.weight_map().items()])

    with MetricsLog(ctx.logs_dir / Files.METRICS) as metrics_log:
        result = train_selector(setup.model, setup.proxy, setup.selector, setup.golden, setup.candidates,
                                setup.loss_fn, setup.settings,
                                on_log=lambda record: metrics_log.write(int(record["step"]), record),
                                progress=stage.progress, on_pass_end=snapshot)
    metrics = _write_selection(run, ctx.work_dir, setup.loaded["candidates"]["rows"], setup.selector.weight_map())
    metrics.update({"steps": result.steps, "steps_per_epoch": setup.settings.steps_per_epoch,
                    "filter_seconds": round(result.seconds, 3),
                    "seconds_per_step": round(result.seconds / max(result.steps, 1), 5),
                    "final_rho": result.history[-1]["rho"] if result.history else stage.rho,
                    "data": {slot: data["stats"] for slot, data in setup.loaded.items()}})
    return StageResult(outputs=[Files.SELECTION, Files.FILTERED, Files.WEIGHTS_PLOT, *snapshots], metrics=metrics)


def _write_selection(run: RunConfig, work_dir: Path, rows: list[Any], weight_of: dict[str, float]) -> dict[str, Any]:
    """Apply the keep rule, write selection/filtered/histogram; metrics (quality when rows carry noise labels)."""
    from alignment.data.readers import write_jsonl
    from alignment.filtering.report import plot_weight_histogram
    from alignment.filtering.selection import auroc_by_kind, keep_mask, noise_labels, selection_quality

    stage = run.stage
    scored = [row for row in rows if row.id in weight_of]  # rows dropped by tokenization were never scored
    weights = [weight_of[row.id] for row in scored]
    kept = keep_mask(weights, stage.keep_rule, stage.keep_fraction, stage.threshold)
    write_jsonl(work_dir / Files.SELECTION,
                [{"id": row.id, "weight": w, "kept": k} for row, w, k in zip(scored, weights, kept, strict=True)])
    write_jsonl(work_dir / Files.FILTERED, [row for row, k in zip(scored, kept, strict=True) if k])
    labels = noise_labels([row.meta for row in scored])
    cut = stage.threshold if stage.keep_rule == "threshold" else min(
        (w for w, k in zip(weights, kept, strict=True) if k), default=None)
    plot_weight_histogram(weights, work_dir / Files.WEIGHTS_PLOT, labels, cut,
                          title=f"selector weights ({stage.activation}, v-term={'on' if stage.value_function else 'off'})")
    metrics: dict[str, Any] = {"candidates": len(rows), "scored": len(scored), "kept": sum(kept),
                               "kept_fraction": sum(kept) / len(scored) if scored else 0.0,
                               "weight_min": min(weights), "weight_max": max(weights)}
    if labels is not None and 0 < sum(labels) < len(labels):
        metrics.update(selection_quality(weights, kept, labels).to_dict("selection/"))
        metrics["corrupted"] = sum(labels)
        kinds = [row.meta.get("corruption") for row in scored]
        if any(kinds):  # the world's rows name their kind of noise (world.corruption=mixed has two)
            metrics.update({f"selection/auroc_{kind}": value
                            for kind, value in auroc_by_kind(weights, labels, kinds).items()})
    return metrics
