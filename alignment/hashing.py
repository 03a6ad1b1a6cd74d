"""Content hashing shared by row ids, fingerprints and manifests.

Every hash in the project goes through :func:`canonical_json`, so the same content always yields the same id on
any machine and Python version (sorted keys, no whitespace, UTF-8).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

ROW_ID_HEX_CHARS = 16


def canonical_json(obj: Any) -> str:
    """Serialise ``obj`` deterministically: sorted keys, compact separators, non-ASCII kept as is."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str)


def sha256_text(text: str) -> str:
    """Hex sha256 of a UTF-8 string."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def content_hash(obj: Any, n_chars: int = ROW_ID_HEX_CHARS) -> str:
    """Stable short id of JSON-like content (used as row ``id``)."""
    return sha256_text(canonical_json(obj))[:n_chars]


def row_id(row: dict[str, Any], fields: tuple[str, ...] | None = None) -> str:
    """Stable id of a data row from its content fields (``id`` itself and private ``_`` keys are ignored).

    ``fields`` restricts the hash to the named fields, e.g. ``("prompt",)`` for a prompt id shared by every
    response to that prompt.
    """
    keys = fields if fields is not None else tuple(k for k in row if k != "id" and not k.startswith("_"))
    return content_hash({k: row.get(k) for k in keys})


def sha256_file(path: str | Path, chunk_bytes: int = 1 << 20) -> str:
    """Hex sha256 of a file's bytes, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(chunk_bytes):
            digest.update(chunk)
    return digest.hexdigest()
