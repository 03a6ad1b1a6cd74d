"""File operations that never leave a half-written or lost file: atomic JSON writes, an exclusive lock beside a
directory, setting a path aside instead of deleting it, and the per-user cache directory."""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

CACHE_ENV = "ALIGNMENT_CACHE_DIR"


def user_cache_dir() -> Path:
    """``$ALIGNMENT_CACHE_DIR``, else ``$XDG_CACHE_HOME/alignment``, else ``~/.cache/alignment``: what later runs,
    other run directories and CI on the same machine share (converted models, file hashes)."""
    if explicit := os.environ.get(CACHE_ENV):
        return Path(explicit).expanduser()
    if xdg := os.environ.get("XDG_CACHE_HOME"):
        return Path(xdg).expanduser() / "alignment"
    return Path.home() / ".cache" / "alignment"


def write_text_atomic(path: str | Path, text: str) -> None:
    """Write ``text`` to a unique temporary name in the same directory, then rename: a reader sees the old file or
    the new one, never half of one, and concurrent writers never mix."""
    path = Path(path)
    handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(handle, "w", encoding="utf-8") as stream:
            stream.write(text)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def write_json_atomic(path: str | Path, payload: Any) -> None:
    """Write JSON atomically (:func:`write_text_atomic`)."""
    write_text_atomic(path, json.dumps(payload, indent=2, sort_keys=True, default=str) + "\n")


def read_json_or_none(path: str | Path) -> Any:
    """The JSON value of ``path``, or None when it is missing, empty, truncated or not JSON (a cache side file
    that a crash cut short is rebuilt, never parsed half)."""
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None


@contextlib.contextmanager
def directory_lock(final: Path, announce: Callable[[str], Any] = print) -> Iterator[None]:
    """An exclusive lock on ``<final>.lock`` beside ``final``, waiting (and saying so) if another process holds it."""
    final.parent.mkdir(parents=True, exist_ok=True)
    lock_path = final.with_name(final.name + ".lock")
    with open(lock_path, "a+") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            announce(f"[{final.name}] another invocation is working on {final}; waiting for it")
            fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _timestamp() -> str:
    return time.strftime("%Y%m%d-%H%M%S")


def set_aside(path: Path, label: str) -> Path:
    """Rename ``path`` to ``<path>.<label>-<time>`` (never deleting what was written) and return the new name."""
    target = path.with_name(f"{path.name}.{label}-{_timestamp()}")
    suffix = 1
    while target.exists():
        target = path.with_name(f"{path.name}.{label}-{_timestamp()}-{suffix}")
        suffix += 1
    os.rename(path, target)
    return target
