"""Run one stage under the artifact contract: validate, build missing world, skip/refuse/resume, commit."""

from __future__ import annotations

import dataclasses
from contextlib import nullcontext
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from alignment.artifacts import StageSpec, is_complete, partial_dir, stage_dir
from alignment.stage_run import StageRun
from stages import distributed
from stages.config.errors import ConfigError
from stages.config.semantic import semantic_config
from stages.config.stage_configs import PrepareConfig, RunConfig
from stages.paths import prepare_dir, uses_world
from stages.registry import StageContext, stage_module


def validate_or_raise(run: RunConfig) -> None:
    """Run every ``validate()`` and raise one :class:`ConfigError` listing all problems."""
    problems = run.validate()
    if problems:
        raise ConfigError(problems)


def ensure_world(run: RunConfig) -> None:
    """Build the embedded world first when a stage reads it and it is missing, saying so."""
    if not uses_world(run) or is_complete(prepare_dir(run)):
        return
    print(f"[{run.stage.name}] the embedded world is not prepared in {prepare_dir(run)}: running stage=prepare first")
    prepare = dataclasses.replace(run, stage=PrepareConfig(progress=run.stage.progress), round=0, force=False,
                                  dry_run=False, run_dir=run.world_dir or run.run_dir, world_dir="")
    run_stage(prepare, local=True)


def stage_spec(run: RunConfig) -> StageSpec:
    """The identity (config + inputs) of this invocation."""
    module = stage_module(run.stage.name)
    return StageSpec(
        stage=run.stage.name,
        stage_version=module.STAGE_VERSION,
        round_index=run.round,
        config=semantic_config(run),
        inputs=module.inputs(run),
    )


def run_stage(run: RunConfig, local: bool = False) -> dict[str, Any]:
    """Run ``run.stage`` and return its manifest (or, for a dry run, the dry run's report).

    Under ``torchrun`` every rank calls this; rank 0 alone manages the stage directory. ``local=True`` runs in
    this process only (rank 0 building the world for the others).
    """
    if run.stage.name == "iterate":  # a driver over the recipe's stages, each run through here
        from stages.iterate import run_rounds

        return run_rounds(run)
    if local or distributed.world_size() == 1:
        return _run_stage(run, multi=False)
    created = distributed.init_process_group()
    try:
        result = _run_stage(run, multi=True)
    except BaseException:
        if created:
            distributed.destroy_process_group(synchronize=False)
        raise
    if created:
        distributed.destroy_process_group()
    return result


def _run_stage(run: RunConfig, multi: bool) -> dict[str, Any]:
    validate_or_raise(run)
    module = stage_module(run.stage.name)
    if distributed.is_secondary_node() and hasattr(module, "run_worker"):
        # multi-node without torchrun (NODE_RANK/NNODES): this node only produces its shards; node 0 commits
        worker_report: dict[str, Any] = module.run_worker(run)
        return worker_report
    if not multi or distributed.rank() == 0:
        ensure_world(run)
    if multi:
        distributed.barrier()
    if run.dry_run:
        report: dict[str, Any] = module.dry_run(run, module.inputs(run))
        return report
    spec = stage_spec(run)
    final = stage_dir(run.run_dir, run.round, run.stage.name)
    is_main = not multi or distributed.rank() == 0
    with StageRun(final, spec, force=run.force) if is_main else nullcontext() as stage_run:
        decision: dict[str, Any] | None = None
        if stage_run is not None:
            decision = {"skipped": stage_run.skipped, "resuming": stage_run.resuming, "manifest": stage_run.manifest}
        if multi:
            decision = distributed.broadcast(decision)
        assert decision is not None
        if decision["skipped"]:
            skipped_manifest: dict[str, Any] = decision["manifest"]
            return skipped_manifest
        work_dir = partial_dir(final)
        if is_main:
            OmegaConf.save(OmegaConf.structured(run), work_dir / "config.yaml")
            (work_dir / "logs").mkdir(exist_ok=True)
        if multi:
            distributed.barrier()
        context = StageContext(work_dir=work_dir, inputs=spec.inputs, resuming=bool(decision["resuming"]))
        # a stage without multi-rank support runs on rank 0 alone; the other ranks wait for its result
        result = module.run(run, context) if is_main or getattr(module, "DISTRIBUTED", False) else None
        if multi:
            result = distributed.broadcast(result)  # rank 0's outputs and metrics are the stage's
        manifest: dict[str, Any] = {}
        if stage_run is not None:
            assert result is not None  # rank 0 always ran the stage
            _ensure_metrics_log(work_dir, result.metrics)
            manifest = stage_run.commit(outputs=sorted({*result.outputs, "config.yaml", "logs"}),
                                        metrics=result.metrics)
        if multi:
            manifest = distributed.broadcast(manifest)
        return manifest


def _ensure_metrics_log(work_dir: Path, metrics: dict[str, Any]) -> None:
    """Every stage directory has ``logs/metrics.jsonl``: stages without a per-step log get their summary."""
    from alignment.train.metrics_log import MetricsLog

    path = work_dir / "logs" / "metrics.jsonl"
    if path.exists():
        return
    numbers = {k: v for k, v in metrics.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
    with MetricsLog(path) as log:
        log.write(0, {"summary": True, **numbers})
