"""Checking complete artifacts against their manifests: damage is reported as damage, never as a config change.

Two depths, one comparison:

* :func:`check_artifact` with ``deep=True`` (``alignment_run stage=verify``) reads and hashes every file.
* ``deep=False`` is the cheap check done before an artifact is trusted as an input or skipped as complete:
  each output's size is compared with the manifest, and only a file modified after the artifact was committed
  (an mtime later than the manifest's finish time) is hashed, through the file-hash cache, so an intact artifact
  costs a few ``stat`` calls and a file merely copied without its times is read once. A byte flipped in place
  with its mtime restored passes this check; ``stage=verify`` finds it.

Either depth reports missing files and extra ones (a file a manifest does not list can change what a model
directory loads). ``_SUCCESS`` records the sha256 of ``manifest.json`` (artifacts committed before it did are
empty there), so a damaged manifest is told apart from the files it describes.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from alignment.hashing import sha256_file
from pipeline.artifacts import MANIFEST, PARTIAL_SUFFIX, SUCCESS, is_complete
from pipeline.layout import Files, RunLayout

_SHA256 = re.compile(r"[0-9a-f]{64}")


@dataclass
class ArtifactCheck:
    """The state of one artifact: which listed files are damaged (name -> why) or missing, which are extra."""

    artifact: Path
    stage: str = ""
    round_index: int | None = None
    files: int = 0
    corrupted: dict[str, str] = field(default_factory=dict)
    missing: list[str] = field(default_factory=list)
    extra: list[str] = field(default_factory=list)
    unreadable: str = ""  # why the manifest itself cannot be used

    @property
    def intact(self) -> bool:
        return not (self.corrupted or self.missing or self.extra or self.unreadable)

    def details(self) -> list[str]:
        """One line per problem (empty when intact)."""
        lines = [f"{MANIFEST}: {self.unreadable}"] if self.unreadable else []
        lines += [f"corrupted {name}: {why}" for name, why in sorted(self.corrupted.items())]
        lines += [f"missing {name}" for name in self.missing]
        lines += [f"extra {name} (not in the manifest)" for name in self.extra]
        return lines


def manifest_sha256(final: Path) -> str:
    """The sha256 of ``final``'s ``manifest.json`` bytes (what :meth:`StageRun.commit` writes into ``_SUCCESS``)."""
    return hashlib.sha256((final / MANIFEST).read_bytes()).hexdigest()


def manifest_sha_recorded(final: Path) -> str | None:
    """The sha256 of ``manifest.json`` that ``_SUCCESS`` records, or None (an older, empty marker)."""
    text = (final / SUCCESS).read_text(errors="replace").strip()
    return text if text else None


def _load_manifest(final: Path, check: ArtifactCheck) -> dict[str, Any] | None:
    """The manifest when it can be trusted; else None with ``check`` saying why."""
    try:
        raw = (final / MANIFEST).read_bytes()
        recorded = manifest_sha_recorded(final)
    except OSError as error:
        check.unreadable = f"cannot be read ({error})"
        return None
    if recorded is not None and not _SHA256.fullmatch(recorded):
        check.corrupted[SUCCESS] = "does not hold a sha256 (the marker itself is damaged)"
    elif recorded is not None and hashlib.sha256(raw).hexdigest() != recorded:
        check.corrupted[MANIFEST] = f"its sha256 differs from the one {SUCCESS} recorded at commit"
        return None
    try:
        manifest = json.loads(raw)
    except ValueError as error:
        check.unreadable = f"not valid JSON ({error})"
        return None
    if not isinstance(manifest, dict) or not isinstance(manifest.get("outputs"), dict):
        check.unreadable = "has no 'outputs' table"
        return None
    return manifest


def _damage(file: Path, entry: dict[str, Any], deep: bool, finished: float | None) -> str | None:
    """Why ``file`` differs from its manifest ``entry``, or None when it matches (see the module docstring)."""
    stat = file.stat()
    if "bytes" in entry and stat.st_size != entry["bytes"]:
        return f"{stat.st_size} bytes, the manifest says {entry['bytes']}"
    if not deep and finished is not None and stat.st_mtime <= finished:
        return None
    if sha256_file(file, use_cache=not deep) != entry.get("sha256"):
        return "content differs from the manifest's sha256" + ("" if deep else " (modified after the commit)")
    return None


def listed_files(final: Path) -> set[str]:
    """Every file below ``final`` (relative names), but the manifest and ``_SUCCESS``."""
    return {str(f.relative_to(final)) for f in final.rglob("*") if f.is_file()} - {MANIFEST, SUCCESS}


OnFile = Callable[[str, int], object]  # called with a listed file's name and size once it is checked


def check_artifact(final: str | Path, deep: bool = True, on_file: OnFile | None = None) -> ArtifactCheck:
    """Compare the complete artifact ``final`` with its manifest (``deep``: hash every file; else the cheap check).

    ``on_file(name, bytes)`` is called after each listed file (a progress bar).
    """
    final = Path(final)
    check = ArtifactCheck(final)
    manifest = _load_manifest(final, check)
    if manifest is None:
        return check
    check.stage, check.round_index = str(manifest.get("stage", final.name)), manifest.get("round")
    outputs: dict[str, dict[str, Any]] = manifest["outputs"]
    finished = manifest.get("timestamps", {}).get("finished")
    check.files = len(outputs)
    for name, entry in sorted(outputs.items()):
        file = final / name
        if not file.is_file():
            check.missing.append(name)
            continue
        why = _damage(file, entry, deep, finished if isinstance(finished, (int, float)) else None)
        if why:
            check.corrupted[name] = why
        if on_file is not None:
            on_file(name, int(entry.get("bytes", 0)))
    check.extra = sorted(listed_files(final) - set(outputs))
    return check


def containing_artifact(path: str | Path) -> Path | None:
    """The complete artifact ``path`` is (or lies inside), or None (a plain file, directory or Hub id)."""
    candidate = Path(path).absolute()
    for directory in (candidate, *candidate.parents):
        if is_complete(directory):
            return directory
    return None


def redo_hint(check: ArtifactCheck) -> str:
    """What to do about a damaged artifact: re-run its stage with force=true (which keeps the directory aside)."""
    final = check.artifact
    stage = check.stage or final.name
    round_index = check.round_index if check.round_index is not None else _round_of(final)
    run_dir = final.parent.parent
    return (f"re-run alignment_run stage={stage} round={round_index} run_dir={run_dir} with the overrides it was "
            f"made with (saved in {final / Files.CONFIG}) and force=true, which renames the damaged directory "
            "aside (never deletes it); later stages are then skipped again if the redone outputs are identical")


def _round_of(final: Path) -> int | str:
    match = re.fullmatch(r"round_(\d+)", final.parent.name)
    return int(match.group(1)) if match else "?"


def damage_report(check: ArtifactCheck, role: str) -> str:
    """A readable error for a damaged artifact met as ``role`` (e.g. "input policy of joint_train")."""
    lines = "\n".join(f"    {line}" for line in check.details())
    return (f"{check.artifact} ({role}) is damaged, not made with another config:\n{lines}\n"
            f"To repair it, {redo_hint(check)}. To list every damaged artifact of the run: "
            f"alignment_run stage=verify run_dir={check.artifact.parent.parent}")


# --- a whole run -----------------------------------------------------------------------------------------------


@dataclass
class RunReport:
    """Every artifact of a run checked, plus directories that are not complete artifacts (never verified)."""

    checks: list[ArtifactCheck]
    incomplete: list[Path]

    @property
    def intact(self) -> bool:
        return all(check.intact for check in self.checks)


def run_artifacts(layout: RunLayout) -> tuple[list[Path], list[Path]]:
    """(complete artifacts, incomplete stage directories) of a run: the embedded world's ``prepare`` and every
    ``round_*/<stage>``; directories set aside (``<stage>.stale-...``, ``.corrupted-...``) are history, not
    artifacts."""
    world = layout.world_artifact()
    directories = [world] if world.is_dir() else []
    for round_dir in sorted(layout.run_dir.glob("round_*")):
        directories += [d for d in sorted(round_dir.iterdir()) if d.is_dir() and d != world
                        and ("." not in d.name or d.name.endswith(PARTIAL_SUFFIX))]
    complete = [d for d in directories if is_complete(d)]
    return complete, [d for d in directories if d not in complete]


def verify_artifacts(artifacts: Iterable[Path], on_file: OnFile | None = None) -> list[ArtifactCheck]:
    """The deep check of each artifact."""
    return [check_artifact(artifact, deep=True, on_file=on_file) for artifact in artifacts]


def render_report(report: RunReport, run_dir: Path) -> str:
    """The table printed by ``stage=verify``: one row per artifact, then what to do about each damaged one."""

    def name(path: Path) -> str:
        return str(path.relative_to(run_dir)) if path.is_relative_to(run_dir) else str(path)

    rows = [(name(c.artifact), "OK" if c.intact else "DAMAGED", str(c.files), "; ".join(c.details()) or "-")
            for c in report.checks]
    rows += [(name(d), "INCOMPLETE", "-", "not verified: no _SUCCESS (a partial run resumes it)")
             for d in report.incomplete]
    header = ("artifact", "status", "files", "details")
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(3)]
    lines = ["  ".join(cell.ljust(width) for cell, width in zip(row[:3], widths, strict=True)) + "  " + row[3]
             for row in [header, *rows]]
    damaged = [c for c in report.checks if not c.intact]
    lines.append("")
    if not report.checks:
        lines.append(f"no complete artifact in {run_dir}")
    elif damaged:
        lines.append(f"{len(damaged)} of {len(report.checks)} artifact(s) damaged:")
        lines += [f"  {name(c.artifact)}: {redo_hint(c)}" for c in damaged]
    else:
        lines.append(f"all {len(report.checks)} artifact(s) intact")
    return "\n".join(lines)
