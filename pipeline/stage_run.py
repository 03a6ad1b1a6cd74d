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

from alignment.fileio import directory_lock, set_aside, write_json_atomic, write_text_atomic
from pipeline.artifacts import (
    MANIFEST,
    PENDING,
    SCHEMA_VERSION,
    SUCCESS,
    ArtifactError,
    DamagedArtifactError,
    StageInput,
    StageSpec,
    StaleArtifactError,
    Status,
    describe_outputs,
    environment_versions,
    is_complete,
    partial_dir,
    read_manifest,
    stale_report,
    status_of,
)
from pipeline.verify import check_artifact, containing_artifact, damage_report, manifest_sha256


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
        self._refuse_damaged_inputs()
        if is_complete(self.final):
            self._set_aside_if_damaged()
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

    def _refuse_damaged_inputs(self) -> None:
        """An input inside a damaged artifact is reported as damage (the cheap check of :mod:`pipeline.verify`),
        not later as "made with different inputs" by a fingerprint that hashed the damaged bytes."""
        readers: dict[Path, list[str]] = {}  # artifact -> the inputs inside it
        for name, item in sorted(self.spec.inputs.items()):
            found = {containing_artifact(path) for path in (item.path, item.source) if path}
            for artifact in (a for a in found if a is not None):
                readers.setdefault(artifact, []).append(name)
        for artifact, names in readers.items():
            check = check_artifact(artifact, deep=False)
            if not check.intact:
                role = f"input{'s' if len(names) > 1 else ''} {', '.join(names)} of {self.spec.stage}"
                raise DamagedArtifactError(damage_report(check, role))

    def _set_aside_if_damaged(self) -> None:
        """A complete artifact whose files no longer match its manifest is never skipped as done: refused, or
        with force=true renamed to ``<stage>.corrupted-<time>`` and redone."""
        check = check_artifact(self.final, deep=False)
        if check.intact:
            return
        if not self.force:
            raise DamagedArtifactError(damage_report(check, f"the complete output of this {self.spec.stage} run"))
        kept = set_aside(self.final, "corrupted")
        self._say(f"force=true: the damaged artifact is kept as {kept}; redoing it")

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
        write_text_atomic(self.work_dir / SUCCESS, manifest_sha256(self.work_dir) + "\n")  # vouches for the manifest
        os.rename(self.work_dir, self.final)
        self.manifest = manifest
        self._say(f"done: outputs in {self.final}")
        return manifest
