"""Run one stage under the artifact contract: validate, build missing world, skip/refuse/resume, commit."""

from __future__ import annotations

import dataclasses
from typing import Any

from omegaconf import OmegaConf

from alignment.artifacts import StageSpec, is_complete, stage_dir
from alignment.stage_run import StageRun
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
                                  dry_run=False)
    run_stage(prepare)


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


def run_stage(run: RunConfig) -> dict[str, Any]:
    """Run ``run.stage`` and return its manifest (or, for a dry run, the dry run's report)."""
    validate_or_raise(run)
    ensure_world(run)
    module = stage_module(run.stage.name)
    if run.dry_run:
        report: dict[str, Any] = module.dry_run(run, module.inputs(run))
        return report
    spec = stage_spec(run)
    final = stage_dir(run.run_dir, run.round, run.stage.name)
    with StageRun(final, spec, force=run.force) as stage_run:
        if stage_run.skipped:
            return stage_run.manifest
        OmegaConf.save(OmegaConf.structured(run), stage_run.work_dir / "config.yaml")
        (stage_run.work_dir / "logs").mkdir(exist_ok=True)
        context = StageContext(work_dir=stage_run.work_dir, inputs=spec.inputs, resuming=stage_run.resuming)
        result = module.run(run, context)
        outputs = sorted({*result.outputs, "config.yaml", "logs"})
        return stage_run.commit(outputs=outputs, metrics=result.metrics)
