"""``logs/metrics.jsonl``: one JSON object per logged step, appended and flushed as training goes.

Optional trackers (tensorboard, wandb, mlflow) receive the same values; their credentials (e.g.
``WANDB_API_KEY``) are read by the trackers from the environment and never written here.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from types import TracebackType
from typing import Any, Protocol


class Tracker(Protocol):
    def log(self, values: dict[str, float], step: int) -> None: ...


class MetricsLog:
    """Append-only metrics file; ``truncate_after(step)`` drops lines past a resumed checkpoint."""

    def __init__(self, path: str | Path, trackers: list[Tracker] | None = None):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.trackers = trackers or []
        self._handle = open(self.path, "a", encoding="utf-8")  # noqa: SIM115 - held open for the run

    def write(self, step: int, values: dict[str, Any]) -> None:
        """Record ``values`` at ``step`` (non-finite floats are written as strings so the file stays JSON)."""
        clean = {k: (v if not isinstance(v, float) or math.isfinite(v) else str(v)) for k, v in values.items()}
        self._handle.write(json.dumps({"step": step, "time": round(time.time(), 3), **clean}) + "\n")
        self._handle.flush()
        numeric = {k: float(v) for k, v in values.items() if isinstance(v, (int, float))}
        for tracker in self.trackers:
            tracker.log(numeric, step=step)

    def truncate_after(self, step: int) -> None:
        """Keep only records with ``step <= step`` (used when resuming from a checkpoint at ``step``)."""
        self._handle.close()
        kept = [line for line in read_metrics(self.path) if int(line["step"]) <= step]
        self.path.write_text("".join(json.dumps(line) + "\n" for line in kept))
        self._handle = open(self.path, "a", encoding="utf-8")  # noqa: SIM115 - held open for the run

    def close(self) -> None:
        self._handle.close()

    def __enter__(self) -> MetricsLog:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()


def read_metrics(path: str | Path) -> list[dict[str, Any]]:
    """All records of a metrics file (an absent file has none)."""
    path = Path(path)
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
