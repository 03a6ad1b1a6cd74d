"""Content hashing shared by row ids, fingerprints and manifests.

Every hash in the project goes through :func:`canonical_json`, so the same content always yields the same id on
any machine and Python version (sorted keys, no whitespace, UTF-8).

File hashes are cached: :func:`sha256_file` reads a file at most once per (real path, size, mtime_ns, ctime_ns,
inode, device) and remembers the digest in memory and in ``<cache dir>/file_sha256.json`` (cache dir:
``$ALIGNMENT_CACHE_DIR``, else ``$XDG_CACHE_HOME/alignment``, else ``~/.cache/alignment``), so an 8B model
directory is read once, not once per stage. Correctness rules:

* A file whose mtime lies within :data:`RACY_WINDOW_NS` of the moment its hash started is not cached: a
  write in the same timestamp tick after hashing would leave its stat unchanged (git's "racy" files). Such a file
  is hashed again next time, once it has aged.
* A file whose stat changed while it was read is not cached.
* The cache file is replaced atomically (temp file + rename) after merging what other processes wrote; a
  concurrent writer may drop the other's newest entries (they are recomputed later), never corrupt the file. An
  unreadable or corrupt cache file is ignored and rewritten. ``ALIGNMENT_HASH_CACHE=0`` keeps hashes in memory only.
"""

from __future__ import annotations

import atexit
import hashlib
import json
import os
import threading
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from alignment.fileio import user_cache_dir

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


def sha256_file(path: str | Path, chunk_bytes: int = 1 << 20, *, use_cache: bool = True) -> str:
    """Hex sha256 of a file's bytes; read only when no cached digest matches the file's current stat.

    ``use_cache=False`` forces a real read (its digest then refreshes the cache).
    """
    real = os.path.realpath(path)
    started_ns = time.time_ns()
    before = os.stat(real)
    cache = _current_cache()
    if use_cache and (known := cache.lookup(real, before)) is not None:
        return known
    digest = _read_sha256(real, chunk_bytes)
    after = os.stat(real)
    if _signature(before) == _signature(after) and not _is_racy(after, started_ns):
        cache.store(real, after, digest)
    return digest


def directory_fingerprint(path: str | Path) -> str:
    """sha256 of a directory's listing ``{relative path: file sha256}`` (every file below it, cached hashes);
    the same value the artifacts' input fingerprint of a plain directory has always had."""
    root = Path(path)
    listing = {str(f.relative_to(root)): sha256_file(f) for f in sorted(root.rglob("*")) if f.is_file()}
    flush_hash_cache()
    return sha256_text(canonical_json(listing))


def file_hash_reads() -> int:
    """Number of files this process actually read to hash them (cache misses and forced reads)."""
    return _READS.count


def flush_hash_cache() -> None:
    """Write hashes not yet saved to the cache file (also done at exit and after large files)."""
    with _LOCK:
        for cache in _CACHES.values():
            cache.flush()


def reset_hash_memo() -> None:
    """Save pending hashes, then forget everything held in memory (the next lookup reads the cache file)."""
    flush_hash_cache()
    with _LOCK:
        _CACHES.clear()


def hash_cache_dir() -> Path:
    """Where the file-hash cache lives: :func:`alignment.fileio.user_cache_dir`."""
    return user_cache_dir()


HASH_CACHE_FORMAT = "file_sha256/1"
HASH_CACHE_NAME = "file_sha256.json"
RACY_WINDOW_NS = 2_000_000_000  # coarsest common timestamp granularity (FAT, ext3, HFS+: 1-2 s)
SAVE_AFTER_BYTES = 64 << 20  # hashing this much makes saving the cache file worth it right away
SAVE_AFTER_NS = 2_000_000_000  # else save at most this often (many small files)
MAX_ENTRIES = 100_000  # oldest entries are dropped beyond this
_SIGNATURE_FIELDS = ("size", "mtime_ns", "ctime_ns", "ino", "dev")
_LOCK = threading.RLock()


@dataclass
class _ReadCounter:
    count: int = 0


_READS = _ReadCounter()


def _read_sha256(path: str, chunk_bytes: int) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(chunk_bytes):
            digest.update(chunk)
    _READS.count += 1
    return digest.hexdigest()


def _signature(stat: os.stat_result) -> tuple[int, ...]:
    return stat.st_size, stat.st_mtime_ns, stat.st_ctime_ns, stat.st_ino, stat.st_dev


def _is_racy(stat: os.stat_result, started_ns: int) -> bool:
    # a write moves mtime and ctime together, so mtime alone tells whether one could still land in the same tick
    return stat.st_mtime_ns > started_ns - RACY_WINDOW_NS


def _valid_entry(entry: Any) -> bool:
    if not isinstance(entry, dict) or not all(isinstance(entry.get(k), int) for k in (*_SIGNATURE_FIELDS,
                                                                                      "hashed_at")):
        return False
    digest = entry.get("sha256")
    return isinstance(digest, str) and len(digest) == 64 and all(c in "0123456789abcdef" for c in digest)


def _read_entries(path: Path) -> dict[str, dict[str, Any]]:
    """Valid entries of a cache file; an absent, unreadable or corrupt file yields none."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    if not isinstance(data, dict) or data.get("format") != HASH_CACHE_FORMAT or not isinstance(
            data.get("entries"), dict):
        return {}
    return {name: entry for name, entry in data["entries"].items() if _valid_entry(entry)}


def _file_state(path: Path) -> tuple[int, int] | None:
    try:
        stat = path.stat()
    except OSError:
        return None
    return stat.st_mtime_ns, stat.st_size


@dataclass
class _HashCache:
    """In-memory digests backed by one cache file (``path`` None: memory only)."""

    path: Path | None
    entries: dict[str, dict[str, Any]] = field(default_factory=dict)
    pending: dict[str, dict[str, Any]] = field(default_factory=dict)
    pending_bytes: int = 0
    saved_ns: int = field(default_factory=time.monotonic_ns)
    seen_state: tuple[int, int] | None = None  # (mtime_ns, size) of the cache file when last read
    writable: bool = True

    def lookup(self, real: str, stat: os.stat_result) -> str | None:
        with _LOCK:
            if (hit := self._match(real, stat)) is None and self._reload():
                hit = self._match(real, stat)
            return hit

    def _match(self, real: str, stat: os.stat_result) -> str | None:
        entry = self.entries.get(real)
        if entry is None or tuple(entry[k] for k in _SIGNATURE_FIELDS) != _signature(stat):
            return None
        return str(entry["sha256"])

    def _reload(self) -> bool:
        """Merge the cache file's entries if it changed since last read (another process may have hashed)."""
        if self.path is None or (state := _file_state(self.path)) == self.seen_state:
            return False
        self.seen_state = state
        self.entries.update({k: v for k, v in _read_entries(self.path).items() if k not in self.pending})
        return True

    def store(self, real: str, stat: os.stat_result, digest: str) -> None:
        entry: dict[str, Any] = dict(zip(_SIGNATURE_FIELDS, _signature(stat), strict=True))
        entry.update(sha256=digest, hashed_at=time.time_ns())
        with _LOCK:
            self.entries[real] = self.pending[real] = entry
            self.pending_bytes += stat.st_size
            if self.pending_bytes >= SAVE_AFTER_BYTES or time.monotonic_ns() - self.saved_ns >= SAVE_AFTER_NS:
                self.flush()

    def flush(self) -> None:
        """Merge pending entries into the cache file and replace it atomically."""
        if self.path is None or not self.pending or not self.writable:
            return
        merged = _read_entries(self.path)
        merged.update(self.pending)
        if len(merged) > MAX_ENTRIES:
            newest = sorted(merged, key=lambda k: merged[k]["hashed_at"])[-MAX_ENTRIES:]
            merged = {k: merged[k] for k in newest}
        temporary = self.path.with_name(f".{self.path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            temporary.write_text(json.dumps({"format": HASH_CACHE_FORMAT, "entries": merged}), encoding="utf-8")
            os.replace(temporary, self.path)
        except OSError as error:  # a read-only home: hashes stay in memory
            self.writable = False
            warnings.warn(f"file hash cache {self.path} is not writable ({error}); hashes are kept in memory only",
                          stacklevel=3)
            return
        self.entries.update(merged)
        self.seen_state = _file_state(self.path)
        self.pending.clear()
        self.pending_bytes, self.saved_ns = 0, time.monotonic_ns()


_CACHES: dict[Path | None, _HashCache] = {}


def _current_cache() -> _HashCache:
    """The cache of the current cache directory (environment read on every call, so tests can redirect it)."""
    persistent = os.environ.get("ALIGNMENT_HASH_CACHE", "1").strip().lower() not in ("0", "false", "off", "no")
    path = hash_cache_dir() / HASH_CACHE_NAME if persistent else None
    with _LOCK:
        if path not in _CACHES:
            _CACHES[path] = _HashCache(path)
        return _CACHES[path]


atexit.register(flush_hash_cache)
