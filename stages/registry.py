"""The stage registry: stage name -> module implementing it.

Each stage module defines ``STAGE_VERSION`` (bump it when the stage's outputs change for the same config),
``inputs(run) -> dict[name, path or id]``, ``run(run, ctx) -> StageResult`` and optionally
``dry_run(run, inputs)``; ``DISTRIBUTED = True`` when every torchrun rank takes part in ``run`` (else rank 0
runs it alone and the others wait). Modules are imported lazily so that config checks never import torch.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

from stages.config.stage_configs import STAGE_CONFIGS

STAGE_NAMES = tuple(STAGE_CONFIGS)


@dataclass
class StageResult:
    """What a stage produced: output paths relative to its work dir, metrics for the manifest."""

    outputs: list[str]
    metrics: dict[str, Any] = field(default_factory=dict)


@dataclass
class StageContext:
    """Where a stage writes and what it reads; built by the runner."""

    work_dir: Path
    inputs: dict[str, str]
    resuming: bool
    announce: Any = print

    @property
    def logs_dir(self) -> Path:
        path = self.work_dir / "logs"
        path.mkdir(parents=True, exist_ok=True)
        return path


def stage_module(name: str) -> ModuleType:
    """The module implementing stage ``name``."""
    if name not in STAGE_CONFIGS:
        raise KeyError(f"unknown stage {name!r}; stages: {', '.join(STAGE_NAMES)}")
    return importlib.import_module(f"stages.{name}")
