"""Cached evaluation generations: one jsonl per model and suite, reused while its key is unchanged.

The key hashes the model's fingerprint, the exact prompts and the sampling settings, so re-judging or
re-reporting never regenerates, and any change that could alter the outputs does.

The cache lives outside any stage directory (no manifest vouches for it), so it vouches for itself: the key file
``<rows>.key.json`` records the key and the sha256 of the rows file, and is written atomically after the rows.
A missing, empty, truncated or mismatched key file, or rows whose bytes changed, mean "not cached": the rows are
generated again, never parsed half.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from alignment.data.readers import read_jsonl, write_jsonl
from alignment.fileio import read_json_or_none, write_json_atomic
from alignment.hashing import content_hash, sha256_file

KEY_SUFFIX = ".key.json"


def generation_key(model_fingerprint: str, prompts: Any, sampling: dict[str, Any], extra: Any = None) -> str:
    """Stable hash of what determines the generations (``prompts``: any JSON-able description)."""
    return content_hash({"model": model_fingerprint, "prompts": prompts, "sampling": sampling, "extra": extra},
                        n_chars=32)


def key_file_of(path: str | Path) -> Path:
    """The key file beside a cached rows file."""
    target = Path(path)
    return target.with_name(target.name + KEY_SUFFIX)


def _stored_rows(target: Path, key: str) -> list[dict[str, Any]] | None:
    """The rows at ``target`` when its key file names ``key`` and the rows' sha256; else None. (Key files written
    before the sha256 was recorded are trusted when the rows still parse.)"""
    record = read_json_or_none(key_file_of(target))
    if not isinstance(record, dict) or record.get("key") != key or not target.is_file():
        return None
    recorded = record.get("sha256")
    if recorded is not None and recorded != sha256_file(target):
        return None
    try:
        return list(read_jsonl(target))
    except ValueError:  # a DataError naming the damaged line: generate again
        return None


def cached_rows(path: str | Path, key: str, produce: Callable[[], list[dict[str, Any]]]) -> tuple[list[dict[str, Any]], bool]:
    """The rows stored at ``path`` when they were written under ``key``; else ``produce()``'s rows, stored.

    Returns ``(rows, reused)``. The key file is removed before and written (atomically) after the rows, so a
    crash never leaves a key that vouches for other rows.
    """
    target = Path(path)
    stored = _stored_rows(target, key)
    if stored is not None:
        return stored, True
    rows = produce()
    target.parent.mkdir(parents=True, exist_ok=True)
    key_file_of(target).unlink(missing_ok=True)
    write_jsonl(target, rows)
    write_json_atomic(key_file_of(target), {"key": key, "sha256": sha256_file(target)})
    return rows, False
