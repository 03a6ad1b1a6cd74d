"""Cached evaluation generations: one jsonl per model and suite, reused while its key is unchanged.

The key hashes the model's fingerprint, the exact prompts and the sampling settings, so re-judging or
re-reporting never regenerates, and any change that could alter the outputs does.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from alignment.data.readers import read_jsonl, write_jsonl
from alignment.hashing import content_hash

KEY_SUFFIX = ".key.json"


def generation_key(model_fingerprint: str, prompts: Any, sampling: dict[str, Any], extra: Any = None) -> str:
    """Stable hash of what determines the generations (``prompts``: any JSON-able description)."""
    return content_hash({"model": model_fingerprint, "prompts": prompts, "sampling": sampling, "extra": extra},
                        n_chars=32)


def cached_rows(path: str | Path, key: str, produce: Callable[[], list[dict[str, Any]]]) -> tuple[list[dict[str, Any]], bool]:
    """The rows stored at ``path`` when they were written under ``key``; else ``produce()``'s rows, stored.

    Returns ``(rows, reused)``. The key file is written after the rows, so a crash never leaves a stale pair.
    """
    target = Path(path)
    key_file = target.with_name(target.name + KEY_SUFFIX)
    if target.is_file() and key_file.is_file() and json.loads(key_file.read_text()).get("key") == key:
        return list(read_jsonl(target)), True
    rows = produce()
    target.parent.mkdir(parents=True, exist_ok=True)
    key_file.unlink(missing_ok=True)
    write_jsonl(target, rows)
    key_file.write_text(json.dumps({"key": key}))
    return rows, False
