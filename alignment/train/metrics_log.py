"""``logs/metrics.jsonl``: one JSON object per logged step, appended and flushed as training goes.

The file belongs to the run that writes it. Records left by an earlier attempt that was killed are dropped when
this one writes its first record, unless :meth:`MetricsLog.truncate_after` first keeps those up to the
checkpoint being resumed (:meth:`MetricsLog.restart` drops them explicitly). Nothing on disk changes before
then, so a run killed again while it starts loses no record.

Optional trackers (tensorboard, wandb, mlflow) receive the same values; their credentials (e.g.
``WANDB_API_KEY``) are read by the trackers from the environment and never written here.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from types import TracebackType
from typing import IO, Any, Protocol

from alignment.fileio import write_text_atomic


class Tracker(Protocol):
    def log(self, values: dict[str, float], step: int) -> None: ...


class MetricsLog:
    """Append-only metrics file of one run; see the module docstring for records of earlier attempts."""

    def __init__(self, path: str | Path, trackers: list[Tracker] | None = None):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.trackers = trackers or []
        self._handle: IO[str] | None = None
        self._settled = False  # whether the records of earlier attempts were kept or dropped

    def write(self, step: int, values: dict[str, Any]) -> None:
        """Record ``values`` at ``step`` (non-finite floats are written as strings so the file stays JSON)."""
        if not self._settled:
            self.restart()
        if self._handle is None:
            self._handle = open(self.path, "a", encoding="utf-8")  # noqa: SIM115 - held open for the run
        clean = {k: (v if not isinstance(v, float) or math.isfinite(v) else str(v)) for k, v in values.items()}
        self._handle.write(json.dumps({"step": step, "time": round(time.time(), 3), **clean}) + "\n")
        self._handle.flush()
        numeric = {k: float(v) for k, v in values.items() if isinstance(v, (int, float))}
        for tracker in self.trackers:
            tracker.log(numeric, step=step)

    def truncate_after(self, step: int) -> None:
        """Keep only records with ``step <= step`` (resuming from a checkpoint at ``step``); a last line cut short
        by a kill is dropped."""
        self._replace([line for line in _complete_records(self.path) if int(line["step"]) <= step])

    def restart(self) -> None:
        """Drop every record (a run that resumes nothing)."""
        self._replace([])

    def _replace(self, records: list[dict[str, Any]]) -> None:
        self.close()
        write_text_atomic(self.path, "".join(json.dumps(record) + "\n" for record in records))
        self._settled = True

    def close(self) -> None:
        if self._handle is not None:
            self._handle.close()
            self._handle = None

    def __enter__(self) -> MetricsLog:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()


def _complete_records(path: Path) -> list[dict[str, Any]]:
    """The records of ``path`` whose line was written whole (ends with a newline)."""
    if not path.is_file():
        return []
    lines = path.read_text(encoding="utf-8").split("\n")[:-1]  # the last piece has no newline: cut short or ""
    return [json.loads(line) for line in lines if line.strip()]


def read_metrics(path: str | Path) -> list[dict[str, Any]]:
    """All records of a metrics file (an absent file has none)."""
    path = Path(path)
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
