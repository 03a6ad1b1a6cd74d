"""``stage=evaluate``: not implemented yet in this version; its config already validates."""

from __future__ import annotations

from typing import Any

from stages.config.stage_configs import RunConfig
from stages.registry import StageContext, StageResult

STAGE_VERSION = 0


def inputs(run: RunConfig) -> dict[str, str]:
    return {}


def dry_run(run: RunConfig, stage_inputs: dict[str, str]) -> dict[str, Any]:
    raise NotImplementedError("stage=evaluate is not available in this version")


def run(run: RunConfig, ctx: StageContext) -> StageResult:
    raise NotImplementedError("stage=evaluate is not available in this version")
