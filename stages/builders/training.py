"""Pieces of a training stage built from the config: policy + reference, objective components and their data
streams, the objective schedule, held-out batches, optima f*, and the verifier report."""

from __future__ import annotations

from functools import partial
from typing import Any

from pipeline.artifacts import is_complete, read_manifest
from pipeline.layout import REF_LOGPS_CACHE
from stages.builders.paths import layout
from stages.config.run_config import RunConfig


def training_accelerator(run: RunConfig, logs_dir: str, micro_batch_size: int) -> Any:
    """The accelerate runtime of a training stage (``stage.strategy``, ``stage.train`` precision and
    accumulation, trackers started), after applying ``stage.num_threads``."""
    import torch

    from alignment.train.setup import make_accelerator

    stage, train = run.stage, run.stage.train
    if stage.num_threads:
        torch.set_num_threads(stage.num_threads)
    accelerator = make_accelerator(stage.strategy, train.precision, train.grad_accum, stage.zero_stage,
                                   stage.offload, train.max_grad_norm, run.tracking.backends, logs_dir,
                                   micro_batch_size=micro_batch_size)
    if run.tracking.backends:
        accelerator.init_trackers(run.tracking.project)
    return accelerator


def build_policy(run: RunConfig, inputs: dict[str, str]) -> tuple[Any, Any, str]:
    """The trainable policy, a function giving reference log-probs (None if the loss needs none) and what the
    reference is (recorded in the manifest)."""
    from alignment.losses import LossType
    from alignment.models.loading import (
        LoraSpec,
        add_lora,
        disable_dropout,
        enable_gradient_checkpointing,
        freeze,
        frozen_copy,
        load_causal_lm,
    )
    from alignment.train.components import adapter_disabled_reference, model_reference

    cfg = run.model
    attention = attention_kernel(run)
    model = load_causal_lm(inputs["policy"], cfg.dtype, attention, cfg.trust_remote_code)
    disable_dropout(model)
    needs_reference = LossType(run.loss.name).needs_reference
    reference_model, kind = None, "none (reference-free loss)"
    if needs_reference and "reference" in inputs:  # a model other than the round's starting policy
        reference_model = freeze(load_causal_lm(inputs["reference"], cfg.dtype, attention, cfg.trust_remote_code))
        kind = f"separate model {inputs['reference']}"
    elif needs_reference and not cfg.lora.enabled:
        reference_model, kind = frozen_copy(model), "frozen copy of the round's starting policy"
    train = train_settings(run)
    if train is not None and train.gradient_checkpointing:
        enable_gradient_checkpointing(model)
    if cfg.lora.enabled:
        lora = cfg.lora
        model = add_lora(model, LoraSpec(lora.r, lora.alpha, lora.dropout, list(lora.target_modules)))
    if reference_model is not None:
        return model, model_reference(reference_model), kind
    if needs_reference:  # LoRA: the base model is the initial policy
        return model, adapter_disabled_reference(model), "the round's starting policy (LoRA base, adapters disabled)"
    return model, None, kind


def _pad_id(tokenizer: Any) -> int:
    return int(tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id)


def objective_order(run: RunConfig) -> tuple[str, str]:
    """The run's two objectives as (index 0, index 1); index 1 is the one ``objective.lambd`` weighs."""
    from alignment.objectives import objective_order as order

    return order(run.objective.objectives)


def preference_component(run: RunConfig, reference_fn: Any, tokenizer: Any) -> Any:
    """The ``loss.*`` preference loss as a training component (also used for held-out evaluation)."""
    from alignment.losses import LossType
    from alignment.train.components import PreferenceComponent

    return PreferenceComponent(LossType(run.loss.name), run.loss.params(), reference_fn, pad_id=_pad_id(tokenizer))


def build_components(run: RunConfig, inputs: dict[str, str], examples: dict[str, list[Any]], tokenizer: Any,
                     reference_fn: Any, accelerator: Any) -> tuple[dict[int, Any], dict[int, Any], Any]:
    """Objective components and their endless batch streams (index 0 and 1, in :func:`objective_order`), plus
    the preference component used for held-out evaluation whatever is trained."""
    from alignment.data.collate import collate_sft
    from alignment.models.loading import freeze, load_causal_lm
    from alignment.train.batches import CyclingBatches
    from alignment.train.components import KDComponent, SFTComponent

    train = run.stage.train
    pad = _pad_id(tokenizer)
    preference = preference_component(run, reference_fn, tokenizer)
    shard = {"num_replicas": accelerator.num_processes, "rank": accelerator.process_index,
             "bucket_window": train.bucket_window}
    components: dict[int, Any] = {}
    streams: dict[int, Any] = {}
    for index, name in enumerate(objective_order(run)):
        seed = run.seed + 1000 * (index + 1)
        if name == "preference":
            components[index] = preference
            collate, length = preference_collate(run, tokenizer)
            streams[index] = CyclingBatches(examples["preference"], train.pref_batch_size, collate, seed,
                                            length=length, **shard)
            continue
        if name == "kd":
            cfg = run.model
            teacher = freeze(load_causal_lm(inputs["teacher"], cfg.dtype, cfg.attn_implementation,
                                            cfg.trust_remote_code)).to(accelerator.device)
            components[index] = KDComponent(teacher)
        else:
            components[index] = SFTComponent()
        streams[index] = CyclingBatches(examples["sft"], train.sft_batch_size, partial(collate_sft, pad_id=pad),
                                        seed, **shard)
    return components, streams, preference


def eval_batches(run: RunConfig, examples: dict[str, list[Any]], tokenizer: Any,
                 accelerator: Any) -> tuple[list[Any], list[Any]]:
    """Held-out SFT and preference batches of this rank's shard (at most ``eval_max_rows`` rows each)."""
    from alignment.data.collate import collate_sft

    train, pad = run.stage.train, _pad_id(tokenizer)
    rank, world = accelerator.process_index, accelerator.num_processes

    def batches(rows: list[Any], size: int, collate: Any) -> list[Any]:
        mine = rows[: train.eval_max_rows][rank::world]
        return [collate(mine[i:i + size]) for i in range(0, len(mine), size)]

    return (batches(examples["sft_eval"], train.sft_batch_size, partial(collate_sft, pad_id=pad)),
            batches(examples["preference_eval"], train.pref_batch_size, preference_collate(run, tokenizer)[0]))


def train_settings(run: RunConfig) -> Any:
    """``stage.train`` of a training stage; None for the filter stage, which has no train settings."""
    return getattr(run.stage, "train", None)


def uses_prefix_sharing(run: RunConfig) -> bool:
    """Whether preference batches use the prefix-shared layout (``stage.train.prefix_sharing`` and a paired loss)."""
    from alignment.losses import LossType

    train = train_settings(run)
    return train is not None and bool(train.prefix_sharing) and LossType(run.loss.name).paired


def attention_kernel(run: RunConfig) -> str:
    """``model.attn_implementation`` resolved for this run (``auto`` avoids flash-attn under prefix sharing)."""
    from alignment.models.loading import resolve_attn_implementation

    return resolve_attn_implementation(run.model.attn_implementation, needs_4d_mask=uses_prefix_sharing(run))


def preference_collate(run: RunConfig, tokenizer: Any) -> tuple[Any, Any]:
    """Collate function of preference batches (prefix-shared when ``stage.train.prefix_sharing`` is on and the
    loss is paired; always carrying the pair ids) and the padded width of one pair in that layout."""
    from alignment.data.collate import collate_preference, collate_prefix_shared
    from alignment.train.batches import WithIds, prefix_shared_length

    if uses_prefix_sharing(run):
        return WithIds(partial(collate_prefix_shared, pad_id=_pad_id(tokenizer))), prefix_shared_length
    return WithIds(partial(collate_preference, pad_id=_pad_id(tokenizer))), None


def cached_reference(run: RunConfig, reference_fingerprint: str, examples: dict[str, list[Any]], tokenizer: Any,
                     reference_fn: Any, accelerator: Any) -> tuple[Any, Any]:
    """With ``stage.train.ref_cache`` and a paired loss that needs a reference: reference log-probs read from
    ``{run_dir}/cache/ref_logps/<key>/``, computed the first time a batch uses a row and appended there, so a run
    pays reference forwards only for the rows it uses and later runs and rounds reuse them
    (``stage.train.ref_cache_eager`` computes every train and eval pair up front instead).

    Returns the reference function to train with and the cache (None without one), whose ``report()`` and
    ``describe()`` go to the manifest.
    """
    from alignment.losses import LossType

    train = run.stage.train
    if not train.ref_cache or reference_fn is None or not LossType(run.loss.name).paired:
        return reference_fn, None
    pairs = list(examples["preference"]) + list(examples["preference_eval"])
    cache = stored_reference(run, reference_fingerprint, tokenizer, reference_fn, pairs,
                             writer=f"rank{accelerator.process_index}")
    if train.ref_cache_eager:
        with accelerator.main_process_first():  # rank 0 computes; the others then find the rows stored
            cache.prefetch(pairs, train.pref_batch_size, accelerator.device, progress=run.stage.progress)
        cache.drop_reference()  # every pair is stored: a frozen reference model is no longer kept in memory
    return cache, cache


def stored_reference(run: RunConfig, reference_fingerprint: str, tokenizer: Any, reference_fn: Any, pairs: list[Any],
                     writer: str) -> Any:
    """``reference_fn`` behind the run's lazy reference log-prob store (``{run_dir}/cache/ref_logps/<key>/``), the
    key covering the reference's fingerprint, the tokenizer and the settings that change the values (dtype,
    attention kernel, max length, truncation), so training and the evaluate stage of one run directory share
    rows: a pair's reference log-probs are computed once, whichever stage meets it first."""
    from alignment.train.ref_cache import tokenizer_fingerprint
    from alignment.train.ref_store import LazyCachedReference, ShardStore, store_key

    settings = {"dtype": run.model.dtype, "attn": attention_kernel(run),
                "max_length": run.data.max_length, "truncation": run.data.truncation}
    key = store_key(reference_fingerprint, tokenizer_fingerprint(tokenizer), settings)
    store = ShardStore(layout(run).cache_dir(REF_LOGPS_CACHE), key, writer=writer)
    return LazyCachedReference(reference_fn, store, pairs, preference_collate(run, tokenizer)[0])


def optima(run: RunConfig) -> dict[str, float]:
    """f* by objective name: ``objective.sft_opt`` / ``dpo_opt`` / ``kd_opt``, else the best held-out losses in
    the manifests of the single-objective runs named in ``optima_from`` (an ``objective=sft`` run gives f*_sft,
    an ``objective=preference`` run f*_preference)."""
    objective = run.objective
    configured = {"sft": objective.sft_opt, "preference": objective.dpo_opt, "kd": objective.kd_opt}
    measured: dict[str, list[float]] = {"sft": [], "preference": []}
    metric = {"sft": "eval/sft_loss_best", "preference": "eval/pref_loss_best"}
    for path in objective.optima_from:
        if not is_complete(path):
            continue
        manifest = read_manifest(path)
        trained = manifest["config"].get("objective", {}).get("name")
        if trained in metric and metric[trained] in manifest.get("metrics", {}):
            measured[trained].append(manifest["metrics"][metric[trained]])
    found = {name: value for name, value in configured.items() if value is not None}
    for name, values in measured.items():
        if name not in found and values:
            found[name] = min(values)
    return found


def build_schedule(run: RunConfig, streams: dict[int, Any], best: dict[str, float]) -> Any:
    """The objective schedule of ``objective.name``."""
    from alignment.objectives import make_schedule
    from alignment.train.setup import sequential_switch_step

    objective, train = run.objective, run.stage.train
    order = objective_order(run)
    first = objective.objectives[1 if objective.reverse else 0]
    switch = sequential_switch_step(objective.split_unit, objective.split_fraction, train.max_steps,
                                    len(streams[order.index(first)].sampler))
    missing = [name for name in order if name not in best]
    if objective.name == "maxright" and missing:
        print(f"[train] MAXRIGHT without known optima for {missing} (objective.sft_opt/dpo_opt/kd_opt or "
              "optima_from): using 0 for them, as the reference implementation does")
    return make_schedule(objective.name, order, objective.lambd, run.seed, switch, first, best,
                         objective.refresh_every)


def verifier_tasks_path(run: RunConfig) -> str | None:
    """The embedded world's held-out tasks a training run is scored on before and after (``data.eval_tasks``
    when it is a world split and ``stage.verifier_eval``); None otherwise, e.g. for real data."""
    if not run.stage.verifier_eval or run.data.eval_tasks.world_split is None:
        return None
    return str(layout(run).world_split(run.data.eval_tasks.world_split))


def verifier_report(tasks_path: str, trained_dir: str, policy_dir: str) -> dict[str, Any]:
    """Verifier accuracy per task family on the world's held-out prompts, before (``verifier_before/*``) and
    after training (``verifier/*``)."""
    from alignment.data.readers import read_jsonl
    from alignment.generation.base import BackendOptions
    from alignment.generation.factory import create_backend
    from alignment.generation.sources import resolve_model_source
    from alignment.world.verifier import verifier_accuracy

    tasks = list(read_jsonl(tasks_path))
    report: dict[str, Any] = {}
    for prefix, path in (("verifier_before", policy_dir), ("verifier", trained_dir)):
        choice = create_backend("hf", resolve_model_source(path), BackendOptions(batch_size=64))
        with choice.backend as backend:
            accuracy = verifier_accuracy(backend, backend.tokenizer, tasks)
        report.update({key.replace("verifier", prefix, 1): value for key, value in accuracy.items()})
    return report
