"""Reference log-prob cache: the frozen reference's (chosen, rejected) sums of every preference pair, computed
once and read back by pair id, so training needs no reference model in memory.

A cache file is ``<cache_dir>/<key>.safetensors``: a float32 ``logps [N, 2]`` tensor (chosen, rejected) and the
pair ids in its metadata. ``key`` is a content hash of everything that determines the values: the reference
model's fingerprint, the tokenizer, the exact token ids of every pair (which already reflect chat template,
max length and truncation) and those settings named explicitly. Files are written atomically (temp file +
rename), so a crash never leaves a half-written cache, and later runs and rounds with the same key reuse it.

This eager table costs a reference forward of every pair before the first step; :mod:`alignment.train.ref_store`
holds the lazy variant (rows computed when first used, appended to the same kind of key's store).
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from alignment.data.tokenize import TokenizedPair
from alignment.hashing import canonical_json, sha256_text

Batch = dict[str, Any]
ReferenceFn = Callable[[Batch], tuple[torch.Tensor, torch.Tensor]]
Table = dict[str, tuple[float, float]]
CACHE_FORMAT = "ref_logps/1"


def pairs_fingerprint(pairs: Sequence[TokenizedPair]) -> str:
    """sha256 over every pair's id and token ids, independent of the pairs' order (duplicates counted once)."""
    digest = hashlib.sha256()
    for line in sorted({canonical_json([p.id, p.prompt_ids, p.chosen_ids, p.rejected_ids]) for p in pairs}):
        digest.update(line.encode("utf-8"))
        digest.update(b"\n")
    return digest.hexdigest()


def tokenizer_fingerprint(tokenizer: Any) -> str:
    """sha256 of a tokenizer's vocabulary/merges/normaliser (fast tokenizers), chat template and special tokens."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    parts = {
        "backend": backend.to_str() if backend is not None else str(getattr(tokenizer, "name_or_path", "")),
        "chat_template": getattr(tokenizer, "chat_template", None),
        "special": {name: getattr(tokenizer, name, None) for name in ("bos_token_id", "eos_token_id", "pad_token_id")},
    }
    return sha256_text(canonical_json(parts))


def cache_key(reference: str, tokenizer: str, pairs: Sequence[TokenizedPair], settings: dict[str, Any]) -> str:
    """Content hash naming a cache file: reference model fingerprint, tokenizer fingerprint, the pairs' token
    ids, and ``settings`` (max length, truncation, dtype, ... as plain JSON values)."""
    payload = {"format": CACHE_FORMAT, "reference": reference, "tokenizer": tokenizer,
               "data": pairs_fingerprint(pairs), "settings": settings}
    return sha256_text(canonical_json(payload))[:32]


def unique_pairs(pairs: Sequence[TokenizedPair]) -> list[TokenizedPair]:
    """``pairs`` with one entry per id; refuses two different pairs sharing an id (the join would be ambiguous)."""
    seen: dict[str, TokenizedPair] = {}
    for pair in pairs:
        other = seen.setdefault(pair.id, pair)
        if (other.prompt_ids, other.chosen_ids, other.rejected_ids) != (pair.prompt_ids, pair.chosen_ids,
                                                                          pair.rejected_ids):
            raise ValueError(f"two different preference pairs share the id {pair.id!r}; the reference cache joins "
                             "rows by id, so ids must identify the content")
    return list(seen.values())


def reference_batches(pairs: Sequence[TokenizedPair], batch_size: int) -> list[list[TokenizedPair]]:
    """The groups of a full reference pass: unique pairs in length order (least padding), ``batch_size`` each."""
    ordered = sorted(unique_pairs(pairs), key=lambda p: len(p.prompt_ids) + len(p.chosen_ids) + len(p.rejected_ids))
    return [ordered[start:start + batch_size] for start in range(0, len(ordered), batch_size)]


@torch.no_grad()
def compute_reference_table(reference: ReferenceFn, pairs: Sequence[TokenizedPair], batch_size: int,
                            collate: Callable[[list[TokenizedPair]], Batch],
                            device: torch.device | str = "cpu") -> Table:
    """Reference (chosen, rejected) log-prob sums of every pair, keyed by pair id.

    Pairs are batched as :func:`reference_batches` groups them; ``collate`` builds a preference batch of either
    layout.
    """
    table: Table = {}
    for chunk in reference_batches(pairs, batch_size):
        batch = {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in collate(chunk).items()}
        chosen, rejected = reference(batch)
        for pair, c, r in zip(chunk, chosen.float().cpu().tolist(), rejected.float().cpu().tolist(), strict=True):
            table[pair.id] = (c, r)
    return table


def save_table(path: Path, table: Table, key: str) -> None:
    """Write ``table`` to ``path`` atomically (temp file in the same directory, then rename)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    ids = sorted(table)
    values = torch.tensor([table[i] for i in ids], dtype=torch.float32).reshape(len(ids), 2)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    save_file({"logps": values}, str(temporary),
              metadata={"format": CACHE_FORMAT, "key": key, "ids": json.dumps(ids)})
    os.replace(temporary, path)


def load_table(path: Path) -> Table:
    """Read a table written by :func:`save_table`; a clear error for a file of another format."""
    with safe_open(str(path), framework="pt") as handle:
        metadata = handle.metadata() or {}
        if metadata.get("format") != CACHE_FORMAT or "ids" not in metadata:
            raise ValueError(f"{path}: not a reference log-prob cache (format {metadata.get('format')!r})")
        values = handle.get_tensor("logps")
    ids = json.loads(metadata["ids"])
    if values.shape != (len(ids), 2):
        raise ValueError(f"{path}: logps has shape {tuple(values.shape)} but {len(ids)} ids")
    return {row_id: (float(c), float(r)) for row_id, (c, r) in zip(ids, values.tolist(), strict=True)}


def load_or_build(cache_dir: Path, key: str, build: Callable[[], Table]) -> tuple[Table, bool]:
    """The table stored under ``key`` in ``cache_dir`` (reused: True), else ``build()`` saved there (False)."""
    path = Path(cache_dir) / f"{key}.safetensors"
    if path.is_file():
        return load_table(path), True
    table = build()
    save_table(path, table, key)
    return table, False


class CachedReference:
    """A :data:`ReferenceFn` reading the table by the batch's ``ids`` (either preference layout)."""

    def __init__(self, table: Table):
        self.table = table

    def __call__(self, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
        """``(chosen [B], rejected [B])`` float32 on the device of ``batch["input_ids"]``."""
        ids = batch.get("ids")
        if ids is None:
            raise ValueError("the reference cache needs the pair ids in the batch (batch['ids']); collate with "
                             "alignment.train.batches.WithIds")
        missing = [row_id for row_id in ids if row_id not in self.table]
        if missing:
            raise KeyError(f"{len(missing)} pair id(s) not in the reference cache, e.g. {missing[:3]}; the cache "
                           "was built for other data")
        values = torch.tensor([self.table[row_id] for row_id in ids], dtype=torch.float32,
                              device=batch["input_ids"].device)
        return values[:, 0], values[:, 1]
