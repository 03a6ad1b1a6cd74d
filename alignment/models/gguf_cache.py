"""A per-user cache of GGUF models converted to plain HF directories, keyed by the GGUF file's content.

Layout under the cache root (:func:`default_cache_root`)::

    models/
      <file stem>-<sha256[:16]>/     converted directory: weights, config, tokenizer, provenance.json, .complete
      <file stem>-<sha256[:16]>.lock an exclusive lock held while converting

The GGUF file's sha256 goes through the per-user file-hash cache (:func:`alignment.hashing.sha256_file`), so a
reuse does not re-read the file.

A conversion is written into a temporary sibling directory, gets ``provenance.json`` and the completion marker,
and only then is renamed into place; so a reader finds a complete directory or none. A directory without the
marker (left by hand or by an older tool) is set aside, never deleted, and converted again; the temporary
directory of a conversion that was killed is removed by the next conversion of the same file.
"""

from __future__ import annotations

import json
import logging
import os
import platform
import shutil
import tempfile
import time
from collections.abc import Callable
from importlib import metadata
from pathlib import Path
from typing import Any

from alignment.fileio import directory_lock, set_aside, user_cache_dir, write_json_atomic
from alignment.hashing import sha256_file
from alignment.models import gguf as gguf_convert

logger = logging.getLogger(__name__)

MODELS_SUBDIR = "models"
MARKER = ".complete"
PROVENANCE = "provenance.json"
KEY_HEX_CHARS = 16
_VERSIONED_PACKAGES = ("transformers", "gguf", "torch", "safetensors", "tokenizers")


def default_cache_root() -> Path:
    """The per-user cache directory (:func:`alignment.fileio.user_cache_dir`)."""
    return user_cache_dir()


def model_key(gguf: Path, sha256: str) -> str:
    """Name of the converted directory: ``<file stem>-<first 16 hex chars of the file's sha256>``."""
    return f"{Path(gguf).stem}-{sha256[:KEY_HEX_CHARS]}"


def is_complete(directory: Path) -> bool:
    """Whether ``directory`` is a finished conversion (its completion marker exists)."""
    return (Path(directory) / MARKER).is_file()


def gguf_sha256(gguf: Path) -> str:
    """Hex sha256 of the file's bytes (read once per file version, through the file-hash cache)."""
    return sha256_file(Path(gguf).resolve())


def provision_gguf_model(gguf: Path, cache_root: Path | None = None, progress: bool = True) -> Path:
    """The plain HF directory converted from ``gguf``: ``<cache_root>/models/<stem>-<sha256[:16]>/``.

    Converts (fp32, see :func:`alignment.models.gguf.convert_gguf_to_hf`) only when no complete directory for
    this file content exists; concurrent callers wait on a file lock and then reuse the first one's result.
    ``cache_root`` defaults to :func:`default_cache_root`.
    """
    gguf = Path(gguf).resolve()
    if not gguf.is_file():
        raise FileNotFoundError(f"GGUF file {gguf} does not exist")
    models = Path(cache_root if cache_root is not None else default_cache_root()) / MODELS_SUBDIR
    models.mkdir(parents=True, exist_ok=True)
    sha = gguf_sha256(gguf)
    final = models / model_key(gguf, sha)
    if is_complete(final):
        return final
    with directory_lock(final, announce=logger.warning):
        if is_complete(final):  # another process converted it while this one waited for the lock
            return final
        _remove_stale_partials(final)
        if final.exists():
            moved = set_aside(final, "incomplete")
            logger.warning("%s has no completion marker; moved it to %s and converting again", final, moved)
        _convert_into_place(gguf, sha, final, progress)
    return final


def _convert_into_place(gguf: Path, sha: str, final: Path, progress: bool) -> None:
    """Convert into a temporary sibling, add provenance and marker, then rename it to ``final``."""
    work = Path(tempfile.mkdtemp(prefix=f".{final.name}.", suffix=".partial", dir=final.parent))
    try:
        facts = gguf_convert.convert_gguf_to_hf(gguf, work, progress=progress)
        provenance = _provenance(gguf, sha, facts)
        write_json_atomic(work / PROVENANCE, provenance)
        (work / MARKER).write_text(json.dumps({"sha256": sha}) + "\n")
        work.chmod(0o755)  # mkdtemp makes it private; the cache is meant to be read like any directory
        os.rename(work, final)
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise


def _remove_stale_partials(final: Path) -> None:
    """Delete temporary directories of conversions of ``final`` that died (the caller holds the lock, so none
    is in progress); they hold only intermediate output, about the model's size each."""
    for partial in final.parent.glob(f".{final.name}.*.partial"):
        logger.warning("removing %s, left by an interrupted conversion", partial)
        shutil.rmtree(partial, ignore_errors=True)


def _provenance(gguf: Path, sha: str, facts: dict[str, Any]) -> dict[str, Any]:
    return {
        "gguf_file": gguf.name,
        "gguf_path": str(gguf),
        "gguf_bytes": gguf.stat().st_size,
        "sha256": sha,
        "source_package": source_package(gguf),
        "versions": {name: _version(name) for name in _VERSIONED_PACKAGES},
        "python": platform.python_version(),
        "created_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        **facts,
    }


def source_package(path: Path, distributions: Callable[[], Any] = metadata.packages_distributions
                   ) -> dict[str, str] | None:
    """``{"name", "version"}`` of the installed distribution whose package directory holds ``path``
    (``None`` for a file outside any installed package)."""
    owners = distributions()
    for parent in Path(path).resolve().parents:
        for name in owners.get(parent.name, []):
            location = Path(str(metadata.distribution(name).locate_file(parent.name))).resolve()
            if location == parent:
                return {"name": name, "version": metadata.version(name)}
    return None


def _version(name: str) -> str | None:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None
