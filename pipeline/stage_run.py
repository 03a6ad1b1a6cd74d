"""Running one stage invocation under the artifact contract (skip, refuse, resume, commit).

Usage::

    with StageRun(final_dir, spec, force=False) as run:
        if run.skipped:
            return run.manifest
        ...write outputs into run.work_dir (resume from it when run.resuming)...
        run.commit(outputs=["pairs.jsonl"], metrics={...})
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from pathlib import Path
from types import TracebackType
from typing import Any

from alignment.fileio import directory_lock, set_aside, write_json_atomic
from pipeline.artifacts import (
    MANIFEST,
    PENDING,
    SCHEMA_VERSION,
    SUCCESS,
    ArtifactError,
    StageInput,
    StageSpec,
    StaleArtifactError,
    Status,
    describe_outputs,
    environment_versions,
    partial_dir,
    read_manifest,
    stale_report,
    status_of,
)


def _input_record(item: StageInput, fingerprint: str) -> dict[str, str]:
    """An input in the manifest: what its fingerprint stands for, and the path loaded when that differs."""
    record = {"path": item.source, "fingerprint": fingerprint}
    if item.path != item.source:
        record["loaded"] = item.path
    return record


class StageRun:
    """The lifetime of one stage invocation in its directory; see the module docstring."""

    def __init__(self, final: Path, spec: StageSpec, force: bool = False,
                 announce: Callable[[str], None] = print):
        self.final = Path(final)
        self.work_dir = partial_dir(self.final)
        self.spec = spec
        self.force = force
        self.announce = announce
        self.skipped = False
        self.resuming = False
        self.manifest: dict[str, Any] = {}
        self._lock = directory_lock(self.final, announce)
        self._started = time.time()
        self._fingerprint = ""

    @property
    def fingerprint(self) -> str:
        return self._fingerprint

    def __enter__(self) -> StageRun:
        self._lock.__enter__()
        try:
            self._decide()
        except BaseException:
            self._lock.__exit__(None, None, None)
            raise
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if exc is not None and not self.skipped and self.work_dir.exists():
            self.announce(f"[{self.spec.stage}] failed; partial work kept in {self.work_dir} for the next run")
        self._lock.__exit__(exc_type, exc, tb)

    def _say(self, message: str) -> None:
        self.announce(f"[{self.spec.stage}] {message}")

    def _decide(self) -> None:
        self._fingerprint = self.spec.fingerprint()
        status = status_of(self.final, self._fingerprint)
        if status is Status.COMPLETE and not self.force:
            self._skip("complete with the same fingerprint")
            return
        if status is Status.COMPLETE:
            kept = set_aside(self.final, "replaced")
            self._say(f"force=true: redoing a complete artifact; the previous one is kept as {kept}")
        if status is Status.STALE:
            if not self.force:
                raise StaleArtifactError(
                    f"{self.final} is complete but was made with a different config or inputs:\n"
                    f"{stale_report(self.final, self.spec)}\n"
                    "Re-run with force=true to redo it (the old directory is kept as "
                    f"{self.final.name}.stale-<time>), or choose another run_dir."
                )
            kept = set_aside(self.final, "stale")
            self._say(f"force=true: kept the stale artifact as {kept}")
        if self.work_dir.exists():
            self._adopt_partial()
        if self.skipped:  # the partial was a finished run that only missed its rename
            return
        if not self.work_dir.exists():
            self.work_dir.mkdir(parents=True)
            write_json_atomic(self.work_dir / PENDING, self._pending())
            self._say(f"working in {self.work_dir}")

    def _skip(self, why: str) -> None:
        self.skipped = True
        self.manifest = read_manifest(self.final)
        self._say(f"{why} ({self._fingerprint[:12]}): skipping, outputs in {self.final}")

    def _pending(self) -> dict[str, Any]:
        return {"fingerprint": self._fingerprint, "stage": self.spec.stage, "started": self._started}

    def _adopt_partial(self) -> None:
        pending = self._partial_record()
        if pending.get("fingerprint") != self._fingerprint:
            kept = set_aside(self.work_dir, "abandoned")
            self._say(f"partial work from another config kept as {kept}; starting afresh")
            return
        if (self.work_dir / SUCCESS).is_file() and self._outputs_intact():
            os.rename(self.work_dir, self.final)
            self._skip("finished earlier but was not moved into place; completed the rename")
            return
        self.resuming = True
        self._started = float(pending.get("started", self._started))
        self._say(f"resuming partial work in {self.work_dir}")

    def _partial_record(self) -> dict[str, Any]:
        """What the partial work was started with: ``pending.json``, or the manifest once commit() wrote it.

        commit() removes ``pending.json`` before ``_SUCCESS`` and the rename, so a crash there leaves only the
        manifest to say which fingerprint the work belongs to.
        """
        for name in (PENDING, MANIFEST):
            record_file = self.work_dir / name
            if record_file.is_file():
                try:
                    record = json.loads(record_file.read_text())
                except ValueError:
                    continue
                if isinstance(record, dict):
                    return record
        return {}

    def _outputs_intact(self) -> bool:
        try:
            manifest = json.loads((self.work_dir / MANIFEST).read_text())
            names = list(manifest["outputs"])
            return describe_outputs(self.work_dir, names) == manifest["outputs"]
        except (OSError, KeyError, ValueError, ArtifactError):
            return False

    def commit(self, outputs: list[str], metrics: dict[str, Any] | None = None,
               extra: dict[str, Any] | None = None) -> dict[str, Any]:
        """Hash ``outputs`` (paths relative to the work dir), write the manifest and ``_SUCCESS``, move into place."""
        if self.skipped:
            raise ArtifactError("commit() called on a skipped stage run")
        manifest = {
            "schema_version": SCHEMA_VERSION,
            "stage": self.spec.stage,
            "stage_version": self.spec.stage_version,
            "round": self.spec.round_index,
            "fingerprint": self._fingerprint,
            "inputs": {
                name: _input_record(self.spec.inputs[name], fingerprint)
                for name, fingerprint in self.spec.input_fingerprints().items()
            },
            "config": self.spec.config,
            "outputs": describe_outputs(self.work_dir, outputs),
            "metrics": metrics or {},
            "env": environment_versions(),
            "timestamps": {"started": self._started, "finished": time.time()},
            **(extra or {}),
        }
        write_json_atomic(self.work_dir / MANIFEST, manifest)
        (self.work_dir / PENDING).unlink(missing_ok=True)
        (self.work_dir / SUCCESS).write_text("")
        os.rename(self.work_dir, self.final)
        self.manifest = manifest
        self._say(f"done: outputs in {self.final}")
        return manifest
