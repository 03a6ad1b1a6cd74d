"""What a stage is to the runner: the :class:`Stage` protocol every stage module satisfies, the context it runs
in and the result it returns.

A stage module defines ``STAGE_VERSION`` (bump it when its outputs change for the same config),
``DISTRIBUTED`` (every torchrun rank takes part in ``run``; else rank 0 runs it alone and the others wait),
``inputs(run)`` (name -> :class:`~pipeline.artifacts.StageInput`), ``dry_run(run, inputs)`` (validate and read
the data, print statistics, train nothing), ``run(run, ctx)`` and ``node_worker`` (None, or the function a
node > 0 of a multi-node job launched without torchrun calls to produce its share of the work in rank 0's
partial directory).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from pipeline.artifacts import StageInput
from pipeline.layout import Files

RunConfigLike = Any  # the typed run config (stages.config); the contract does not depend on its definition


@dataclass
class StageResult:
    """What a stage produced: output paths relative to its work dir, metrics for the manifest."""

    outputs: list[str]
    metrics: dict[str, Any] = field(default_factory=dict)


@dataclass
class StageContext:
    """Where a stage writes (``work_dir``, the ``.partial`` directory), the paths of its inputs to load and
    their fingerprints (computed once by the runner, e.g. to name a model in a report)."""

    work_dir: Path
    inputs: dict[str, str]
    resuming: bool
    fingerprints: dict[str, str] = field(default_factory=dict)

    @property
    def logs_dir(self) -> Path:
        path = self.work_dir / Files.LOGS
        path.mkdir(parents=True, exist_ok=True)
        return path


class Stage(Protocol):
    """A stage module (see the module docstring)."""

    @property
    def STAGE_VERSION(self) -> int: ...  # noqa: N802  (read-only module constants)

    @property
    def DISTRIBUTED(self) -> bool: ...  # noqa: N802

    @property
    def node_worker(self) -> Callable[[RunConfigLike, Path], dict[str, Any]] | None: ...

    def inputs(self, run: RunConfigLike) -> dict[str, StageInput]: ...

    def dry_run(self, run: RunConfigLike, inputs: dict[str, str]) -> dict[str, Any]: ...

    def run(self, run: RunConfigLike, ctx: StageContext) -> StageResult: ...
