"""Run one stage under the artifact contract: validate, build a missing world it reads, skip/refuse/resume,
commit. Under ``torchrun`` every rank calls :func:`run_stage`; rank 0 alone manages the stage directory."""

from __future__ import annotations

import dataclasses
import json
import time
from contextlib import nullcontext
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from pipeline.artifacts import PENDING, StageInput, StageSpec, is_complete, partial_dir
from pipeline.layout import Files
from pipeline.protocol import Stage, StageContext
from pipeline.stage_run import StageRun
from stages import distributed
from stages.builders.paths import layout, reads_world
from stages.config.run_config import RunConfig
from stages.config.semantic import semantic_config
from stages.config.stage_configs import PrepareConfig
from stages.config.validate import validate_or_raise
from stages.registry import stage_module

NODE_WORKER_POLL_S = 5.0


def ensure_world(run: RunConfig, inputs: dict[str, StageInput]) -> None:
    """Build the embedded world first when this invocation reads it and it is missing, saying so."""
    world = layout(run).world_artifact()
    if run.stage.name == "prepare" or is_complete(world) or not reads_world(run, inputs):
        return
    print(f"[{run.stage.name}] the embedded world is not prepared in {world}: running stage=prepare first")
    prepare = dataclasses.replace(run, stage=PrepareConfig(progress=run.stage.progress), round=0, force=False,
                                  dry_run=False, run_dir=run.world_dir or run.run_dir, world_dir="")
    run_stage(prepare, local=True)


def stage_spec(run: RunConfig, module: Stage, inputs: dict[str, StageInput]) -> StageSpec:
    """The identity (config + inputs) of this invocation."""
    return StageSpec(stage=run.stage.name, stage_version=module.STAGE_VERSION, round_index=run.round,
                     config=semantic_config(run), inputs=inputs)


def run_stage(run: RunConfig, local: bool = False) -> dict[str, Any]:
    """Run ``run.stage`` and return its manifest (or, for a dry run, the dry run's report).

    ``local=True`` runs in this process only (rank 0 building the world for the others).
    """
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
    inputs = module.inputs(run)
    if distributed.is_secondary_node() and module.node_worker is not None:
        return run_node_worker(run)
    if not multi or distributed.rank() == 0:
        ensure_world(run, inputs)
    if multi:
        distributed.barrier()
    paths = {name: item.path for name, item in inputs.items()}
    if run.dry_run:
        report: dict[str, Any] = module.dry_run(run, paths)
        return report
    spec = stage_spec(run, module, inputs)
    final = layout(run).stage_dir(run.round, run.stage.name)
    is_main = not multi or distributed.rank() == 0
    with StageRun(final, spec, force=run.force) if is_main else nullcontext() as stage_run:
        decision: dict[str, Any] | None = None
        if stage_run is not None:
            decision = {"skipped": stage_run.skipped, "resuming": stage_run.resuming, "manifest": stage_run.manifest,
                        "fingerprints": spec.input_fingerprints()}
        if multi:
            decision = distributed.broadcast(decision)
        assert decision is not None
        if decision["skipped"]:
            skipped_manifest: dict[str, Any] = decision["manifest"]
            return skipped_manifest
        work_dir = partial_dir(final)
        if is_main:
            OmegaConf.save(OmegaConf.structured(run), work_dir / Files.CONFIG)
            (work_dir / Files.LOGS).mkdir(exist_ok=True)
        if multi:
            distributed.barrier()
        context = StageContext(work_dir=work_dir, inputs=paths, resuming=bool(decision["resuming"]),
                               fingerprints=decision["fingerprints"])
        # a stage without multi-rank support runs on rank 0 alone; the other ranks wait for its result
        result = module.run(run, context) if is_main or module.DISTRIBUTED else None
        if multi:
            result = distributed.broadcast(result)  # rank 0's outputs and metrics are the stage's
        manifest: dict[str, Any] = {}
        if stage_run is not None:
            assert result is not None  # rank 0 always ran the stage
            _ensure_metrics_log(work_dir, result.metrics)
            manifest = stage_run.commit(outputs=sorted({*result.outputs, Files.CONFIG, Files.LOGS}),
                                        metrics=result.metrics)
        if multi:
            manifest = distributed.broadcast(manifest)
        return manifest


def run_node_worker(run: RunConfig, timeout_s: float | None = None) -> dict[str, Any]:
    """A node > 0 of a multi-node job launched without torchrun (NODE_RANK/NNODES, one process per node): wait
    until rank 0 has started the stage's partial directory with this config, then let the stage write this
    node's share there, without taking the stage lock. Returns the stage's worker report (``{}`` when the
    artifact is already complete)."""
    validate_or_raise(run)
    module = stage_module(run.stage.name)
    if module.node_worker is None:
        raise ValueError(f"stage {run.stage.name} has no node workers; run it on node 0 only")
    final = layout(run).stage_dir(run.round, run.stage.name)
    work_dir = partial_dir(final)
    timeout = run.stage.shard_wait_timeout_s if timeout_s is None else timeout_s
    deadline = time.monotonic() + timeout
    fingerprint = stage_spec(run, module, module.inputs(run)).fingerprint()
    while True:
        if is_complete(final):
            return {}
        pending = work_dir / PENDING
        if pending.is_file() and json.loads(pending.read_text()).get("fingerprint") == fingerprint:
            break
        if time.monotonic() > deadline:
            raise TimeoutError(f"node worker: rank 0 did not start {work_dir} with this config in {timeout:.0f}s")
        time.sleep(NODE_WORKER_POLL_S)
    return module.node_worker(run, work_dir)


def _ensure_metrics_log(work_dir: Path, metrics: dict[str, Any]) -> None:
    """Every stage directory has ``logs/metrics.jsonl``: stages without a per-step log get this attempt's summary
    (one an earlier attempt wrote before it was killed is replaced)."""
    from alignment.train.metrics_log import MetricsLog, read_metrics

    path = work_dir / Files.LOGS / Files.METRICS
    try:
        if any(not record.get("summary") for record in read_metrics(path)):
            return  # the stage's own per-step log
    except ValueError:
        return  # not a summary this function wrote: leave it to the stage that did
    numbers = {k: v for k, v in metrics.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
    with MetricsLog(path) as log:
        log.write(0, {"summary": True, **numbers})
