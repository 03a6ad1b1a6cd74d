"""Lazy reference log-prob cache: a batch's reference (chosen, rejected) sums are computed the first time its
rows are used and appended to an on-disk store, so a run pays reference forwards only for the rows it trains or
evaluates on, and later epochs, runs and rounds reuse them.

Identity. The store directory is ``<cache_dir>/<key>/`` with ``key`` = :func:`store_key` (format, reference model
fingerprint, tokenizer fingerprint, settings such as dtype, attention kernel, max length, truncation). Unlike the
eager table (:mod:`alignment.train.ref_cache`), the key cannot cover the data, which is not known up front, so
every row is stored under ``(pair id, content hash)``, the hash covering the pair's prompt, chosen and rejected
token ids (:func:`pair_content_hash`). A pair whose token ids changed under the same id is therefore a different
row: it is recomputed, never served a stale value.

Format. An append-only directory of small safetensors shards, one per computed batch: ``logps [n, 2]`` float32
(chosen, rejected) and, in the metadata, the key, the row ids, their content hashes and a sha256 checksum of all
of them. A shard is written to a hidden temporary name, fsynced and renamed into place, so a reader sees a
complete shard or none; a crash loses at most the batch in flight. A shard that does not parse, belongs to
another key or fails its checksum (torn or damaged on disk) is ignored with a warning; its rows count as missing
and are recomputed.

Several writers. Every writer (rank, process) names its shards ``<writer>-<pid>-<random>-<n>.safetensors``, so
concurrent ranks never write the same file. A writer reads shards it has not seen before whenever a batch has
missing rows, so rows another rank computed meanwhile are reused; two ranks that miss the same row at the same
moment both compute and store it, and each keeps serving the value it read or computed first (the two can differ
by float rounding when they were computed in differently padded batches). :meth:`ShardStore.compact` merges the
shards into one; run it only while no other process writes the store.
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import warnings
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save as safetensors_bytes
from tqdm.auto import tqdm

from alignment.data.tokenize import TokenizedPair
from alignment.hashing import canonical_json, sha256_text
from alignment.train.ref_cache import Batch, ReferenceFn, reference_batches, unique_pairs

STORE_FORMAT = "ref_logps_lazy/1"
RowKey = tuple[str, str]  # (pair id, content hash of its token ids)
Rows = dict[RowKey, tuple[float, float]]


def store_key(reference: str, tokenizer: str, settings: dict[str, Any]) -> str:
    """Content hash naming a store directory: reference model fingerprint, tokenizer fingerprint and
    ``settings`` (dtype, attention kernel, max length, truncation, ... as plain JSON values); no data."""
    payload = {"format": STORE_FORMAT, "reference": reference, "tokenizer": tokenizer, "settings": settings}
    return sha256_text(canonical_json(payload))[:32]


def pair_content_hash(pair: TokenizedPair) -> str:
    """sha256 (32 hex chars) of a pair's prompt, chosen and rejected token ids."""
    return sha256_text(canonical_json([pair.prompt_ids, pair.chosen_ids, pair.rejected_ids]))[:32]


def _checksum(key: str, ids: list[str], hashes: list[str], values: torch.Tensor) -> str:
    digest = hashlib.sha256(canonical_json([key, ids, hashes]).encode("utf-8"))
    digest.update(values.contiguous().numpy().tobytes())
    return digest.hexdigest()


class ShardStore:
    """The rows of one store directory in memory, read from its shards and appended to as new shards.

    ``writer`` names this writer's shards (e.g. ``rank3``); it must differ between concurrent ranks.
    """

    def __init__(self, cache_dir: str | Path, key: str, writer: str = "rank0"):
        self.key = key
        self.directory = Path(cache_dir) / key
        self.writer = f"{writer}-{os.getpid()}-{secrets.token_hex(4)}"
        self.rows: Rows = {}
        self.ignored: list[str] = []  # shards that could not be used, with the reason
        self._seen: set[str] = set()  # shard names read or tried
        self._loaded: set[str] = set()  # shard names read successfully
        self._written = 0
        self.refresh()

    def refresh(self) -> int:
        """Read the shards not read before (in name order; a row already known keeps its value); rows added."""
        if not self.directory.is_dir():
            return 0
        added = 0
        for path in sorted(self.directory.glob("[!.]*.safetensors")):
            if path.name in self._seen:
                continue
            self._seen.add(path.name)
            try:
                rows = self._read_shard(path)
            except FileNotFoundError:  # merged away by compact() since the listing; its rows are in the merge
                self._seen.discard(path.name)
                continue
            except Exception as error:  # any parse failure means the shard is unusable
                self.ignored.append(f"{path.name}: {error}")
                warnings.warn(f"reference cache shard {path} is unreadable and ignored ({error}); its rows will be "
                              "recomputed", stacklevel=2)
                continue
            self._loaded.add(path.name)
            for row, values in rows.items():
                if row not in self.rows:
                    self.rows[row] = values
                    added += 1
        return added

    def _read_shard(self, path: Path) -> Rows:
        with safe_open(str(path), framework="pt") as handle:
            metadata = handle.metadata() or {}
            values = handle.get_tensor("logps")
        if metadata.get("format") != STORE_FORMAT or metadata.get("key") != self.key:
            raise ValueError(f"format {metadata.get('format')!r}, key {metadata.get('key')!r}; expected "
                             f"{STORE_FORMAT!r}, {self.key!r}")
        ids, hashes = json.loads(metadata["ids"]), json.loads(metadata["hashes"])
        if values.dtype != torch.float32 or values.shape != (len(ids), 2) or len(hashes) != len(ids):
            raise ValueError(f"logps {values.dtype} {tuple(values.shape)} for {len(ids)} ids, {len(hashes)} hashes")
        if metadata.get("checksum") != _checksum(self.key, ids, hashes, values):
            raise ValueError("checksum mismatch (torn or damaged file)")
        return {(i, h): (c, r) for i, h, (c, r) in zip(ids, hashes, values.tolist(), strict=True)}

    def append(self, rows: Rows) -> Path | None:
        """Store ``rows`` as one new shard (atomically) and in memory; the shard's path (None if no rows)."""
        if not rows:
            return None
        self._written += 1
        path = self.directory / f"{self.writer}-{self._written:06d}.safetensors"
        self._write_shard(path, rows)
        self._seen.add(path.name)
        self._loaded.add(path.name)
        for row, values in rows.items():
            self.rows.setdefault(row, values)
        return path

    def _write_shard(self, path: Path, rows: Rows) -> None:
        ids, hashes = [row[0] for row in rows], [row[1] for row in rows]
        values = torch.tensor(list(rows.values()), dtype=torch.float32).reshape(len(rows), 2)
        metadata = {"format": STORE_FORMAT, "key": self.key, "ids": json.dumps(ids), "hashes": json.dumps(hashes),
                    "checksum": _checksum(self.key, ids, hashes, values)}
        payload = safetensors_bytes({"logps": values}, metadata=metadata)
        self.directory.mkdir(parents=True, exist_ok=True)
        temporary = path.with_name(f".{path.name}.tmp")
        with open(temporary, "wb") as handle:
            handle.write(payload)
            handle.flush()
            os.fsync(handle.fileno())  # the bytes are on disk before the name is
        os.replace(temporary, path)
        _fsync_directory(self.directory)

    def compact(self) -> Path | None:
        """Merge every readable shard into one new shard, then delete the merged ones (run it only while no one
        else writes); unreadable shards stay for inspection. The new shard's path, None with fewer than two."""
        self.refresh()
        merged = sorted(self._loaded)
        if len(merged) < 2:
            return None
        path = self.append(dict(self.rows))
        for name in merged:
            (self.directory / name).unlink(missing_ok=True)
            self._seen.discard(name)
            self._loaded.discard(name)
        return path


def _fsync_directory(directory: Path) -> None:
    """Make a rename durable (best effort: not every platform can open a directory)."""
    try:
        descriptor = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(descriptor)
    except OSError:
        pass
    finally:
        os.close(descriptor)


class LazyCachedReference:
    """A :data:`ReferenceFn` (``batch -> (chosen [B], rejected [B])``, rows named by ``batch["ids"]``) serving
    known rows from ``store`` and computing the batch's missing rows with ``reference``, appended as one shard.

    ``pairs`` are every pair a batch may name (their token ids identify the rows); ``collate`` builds a batch of
    the missing rows alone when only some are missing (all missing: ``reference`` gets the batch itself, so the
    values equal a live reference's exactly). Counts: ``hits``/``misses`` per row served; :meth:`report`.
    """

    def __init__(self, reference: ReferenceFn, store: ShardStore, pairs: Iterable[TokenizedPair],
                 collate: Callable[[list[TokenizedPair]], Batch]):
        self.reference, self.store, self.collate = reference, store, collate
        self.pairs = {pair.id: pair for pair in unique_pairs(list(pairs))}
        self.hits = self.misses = 0
        self.computed: set[RowKey] = set()
        self.reused: set[RowKey] = set()
        self._hashes: dict[str, str] = {}

    def row_key(self, pair_id: str) -> RowKey:
        if pair_id not in self.pairs:
            raise KeyError(f"pair id {pair_id!r} of the batch is not among the pairs the reference cache was given")
        if pair_id not in self._hashes:
            self._hashes[pair_id] = pair_content_hash(self.pairs[pair_id])
        return pair_id, self._hashes[pair_id]

    def __call__(self, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
        """``(chosen [B], rejected [B])`` float32 on the device of ``batch["input_ids"]``."""
        ids = batch.get("ids")
        if ids is None:
            raise ValueError("the reference cache needs the pair ids in the batch (batch['ids']); collate with "
                             "alignment.train.batches.WithIds")
        keys = [self.row_key(pair_id) for pair_id in ids]
        missing = [row for row in dict.fromkeys(keys) if row not in self.store.rows]
        if missing and self.store.refresh():  # another rank (or run) may have stored them meanwhile
            missing = [row for row in missing if row not in self.store.rows]
        if missing:
            self._compute(batch, keys, missing)
        absent = set(missing)
        for row in keys:
            if row in absent:
                self.misses += 1
            else:
                self.hits += 1
                if row not in self.computed:
                    self.reused.add(row)
        values = torch.tensor([self.store.rows[row] for row in keys], dtype=torch.float32,
                              device=batch["input_ids"].device)
        return values[:, 0], values[:, 1]

    @torch.no_grad()
    def _compute(self, batch: Batch, keys: list[RowKey], missing: list[RowKey]) -> None:
        device = batch["input_ids"].device
        if len(missing) == len(keys):  # every row missing (and none repeated): the batch as it is
            sub_batch = batch
        else:
            collated = self.collate([self.pairs[pair_id] for pair_id, _ in missing])
            sub_batch = {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in collated.items()}
        chosen, rejected = self.reference(sub_batch)
        values = zip(chosen.float().cpu().tolist(), rejected.float().cpu().tolist(), strict=True)
        self.store.append(dict(zip(missing, values, strict=True)))
        self.computed.update(missing)

    def prefetch(self, pairs: Sequence[TokenizedPair], batch_size: int, device: torch.device | str = "cpu",
                 progress: bool = True) -> int:
        """The eager pass on the lazy store: compute every pair of ``pairs`` not stored yet, in length-ordered
        batches (:func:`reference_batches`), one shard per batch; the number of rows computed."""
        self.store.refresh()
        todo = [pair for pair in unique_pairs(list(pairs)) if self.row_key(pair.id) not in self.store.rows]
        before = len(self.computed)
        for chunk in tqdm(reference_batches(todo, batch_size), desc="reference log-probs", disable=not progress):
            batch = {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in self.collate(chunk).items()}
            rows = [self.row_key(pair.id) for pair in chunk]
            self._compute(batch, rows, rows)
        return len(self.computed) - before

    def drop_reference(self) -> None:
        """Forget the wrapped reference (freeing a frozen reference model) once every pair is stored, e.g. after
        :meth:`prefetch`; a row missing later is then an error rather than a silent recompute."""
        missing = [pair_id for pair_id in self.pairs if self.row_key(pair_id) not in self.store.rows]
        if missing:
            raise RuntimeError(f"{len(missing)} pair(s) are not stored yet (e.g. {missing[:3]}); prefetch them first")

        def stored_only(batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
            raise KeyError("a pair outside the prefetched ones reached the reference cache")

        self.reference = stored_only

    def report(self) -> dict[str, int]:
        """``rows_cached`` (rows in the store now), ``rows_computed`` (by this instance), ``rows_reused``
        (distinct rows served that were stored before), ``hits``/``misses`` (rows served), ``shards_ignored``."""
        return {"rows_cached": len(self.store.rows), "rows_computed": len(self.computed),
                "rows_reused": len(self.reused), "hits": self.hits, "misses": self.misses,
                "shards_ignored": len(self.store.ignored)}

    def describe(self) -> str:
        """One line for a manifest."""
        counts = self.report()
        note = (f"lazy reference log-probs (store {self.store.key}): {counts['rows_reused']} rows reused, "
                f"{counts['rows_computed']} computed, {counts['rows_cached']} stored")
        if counts["shards_ignored"]:
            note += f"; {counts['shards_ignored']} unreadable shard(s) ignored"
        return note
