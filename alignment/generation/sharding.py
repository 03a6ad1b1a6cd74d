"""Splitting prompt work into shard files across data-parallel workers, resuming, and merging.

Items are cut into contiguous shards of at most ``shard_size``; shard ``i`` belongs to worker ``i % workers``.
Each shard is written atomically as ``shard-{i:05d}-of-{n:05d}.jsonl``, so a file that exists is complete: a
restart after a crash regenerates only the missing shards, and a single process resumes too.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from tqdm.auto import tqdm

from alignment.data.readers import read_jsonl, write_jsonl
from alignment.generation.base import ProgressFn

T = TypeVar("T")


@dataclass(frozen=True)
class Shard:
    """Items ``[start, stop)`` of the full list; shard ``index`` of ``count``."""

    index: int
    count: int
    start: int
    stop: int

    @property
    def size(self) -> int:
        return self.stop - self.start

    def path(self, directory: str | Path) -> Path:
        return Path(directory) / f"shard-{self.index:05d}-of-{self.count:05d}.jsonl"


Produce = Callable[[Shard, Sequence[T], ProgressFn], list[dict[str, Any]]]


@dataclass
class ShardReport:
    """Which shards this worker generated and which it found already written."""

    generated: list[int] = field(default_factory=list)
    reused: list[int] = field(default_factory=list)


def worker_rank_and_count(env: Mapping[str, str] | None = None) -> tuple[int, int]:
    """``(rank, workers)`` of this process: torchrun's RANK/WORLD_SIZE, else NODE_RANK/NNODES, else (0, 1)."""
    env = os.environ if env is None else env
    for rank_key, size_key in (("RANK", "WORLD_SIZE"), ("NODE_RANK", "NNODES")):
        if size_key in env:
            rank, size = int(env.get(rank_key, "0")), int(env[size_key])
            if size < 1 or not 0 <= rank < size:
                raise ValueError(f"{rank_key}={rank} is not a valid rank for {size_key}={size}")
            return rank, size
    return 0, 1


def local_devices(devices: Sequence[str], local_rank: int, per_worker: int) -> list[str]:
    """The ``per_worker`` devices of local worker ``local_rank`` (e.g. its tensor-parallel GPUs), in order."""
    mine = list(devices[local_rank * per_worker:(local_rank + 1) * per_worker])
    if len(mine) < per_worker:
        raise ValueError(f"local worker {local_rank} needs devices {local_rank * per_worker}.."
                         f"{(local_rank + 1) * per_worker - 1} but only {len(devices)} are visible")
    return mine


def plan_shards(n_items: int, shard_size: int) -> list[Shard]:
    """Contiguous shards of at most ``shard_size`` items covering ``n_items`` (one empty shard when none)."""
    if shard_size < 1:
        raise ValueError(f"shard_size must be >= 1 (got {shard_size})")
    count = max(1, math.ceil(n_items / shard_size))
    return [Shard(i, count, i * shard_size, min(n_items, (i + 1) * shard_size)) for i in range(count)]


def shards_of_worker(shards: Sequence[Shard], rank: int, workers: int) -> list[Shard]:
    """The shards worker ``rank`` of ``workers`` owns (round-robin, so every worker gets a similar load)."""
    return [shard for shard in shards if shard.index % workers == rank]


def shard_is_complete(shard: Shard, directory: str | Path) -> bool:
    """Whether the shard's file exists with one row per item (files are renamed into place when complete)."""
    path = shard.path(directory)
    if not path.is_file():
        return False
    with open(path, "rb") as handle:
        return sum(1 for line in handle if line.strip()) == shard.size


def missing_shards(shards: Sequence[Shard], directory: str | Path) -> list[Shard]:
    """The shards without a complete file in ``directory``."""
    return [shard for shard in shards if not shard_is_complete(shard, directory)]


def run_shards(items: Sequence[T], shards: Sequence[Shard], directory: str | Path, produce: Produce[T],
               progress: bool = False, desc: str = "shards", unit: str = "item") -> ShardReport:
    """Write every shard of ``shards`` that is missing, with ``produce(shard, items[start:stop], advance)`` (one
    row per item).

    One progress bar (``progress``) counts the items of the missing shards: ``produce`` may call ``advance(k)``
    as ``k`` more items are done, and whatever it did not report is counted when its shard is written.
    """
    report = ShardReport()
    todo = [shard for shard in shards if not shard_is_complete(shard, directory)]
    report.reused = [shard.index for shard in shards if shard not in todo]
    with tqdm(total=sum(shard.size for shard in todo), desc=desc, unit=unit, disable=not progress) as bar:
        for number, shard in enumerate(todo, start=1):
            bar.set_postfix_str(f"shard {number}/{len(todo)}")
            advance = _ShardAdvance(bar, shard.size)
            rows = produce(shard, items[shard.start:shard.stop], advance)
            if len(rows) != shard.size:
                raise RuntimeError(f"shard {shard.index}: produced {len(rows)} rows for {shard.size} items")
            write_jsonl(shard.path(directory), rows)
            advance(advance.left)
            report.generated.append(shard.index)
    return report


class _ShardAdvance:
    """Advances a bar by the items of one shard as they finish, never past the shard's size."""

    def __init__(self, bar: Any, size: int):
        self.bar, self.left = bar, size

    def __call__(self, count: int) -> None:
        step = max(0, min(count, self.left))
        self.left -= step
        self.bar.update(step)


def wait_for_shards(shards: Sequence[Shard], directory: str | Path, timeout_s: float,
                    poll_s: float = 5.0, announce: Callable[[str], None] = print) -> None:
    """Block until every shard is complete (other workers write theirs); ``TimeoutError`` names the missing."""
    deadline = time.monotonic() + timeout_s
    missing = missing_shards(shards, directory)
    if missing:
        announce(f"waiting for {len(missing)} shard(s) from other workers in {directory}")
    while missing:
        if time.monotonic() > deadline:
            names = ", ".join(s.path(directory).name for s in missing[:5])
            raise TimeoutError(f"{len(missing)} shard(s) still missing after {timeout_s:.0f}s: {names}"
                               f"{' ...' if len(missing) > 5 else ''}; did every worker start?")
        time.sleep(poll_s)
        missing = missing_shards(missing, directory)


def wait_for_file(path: str | Path, timeout_s: float, what: str, poll_s: float = 5.0) -> None:
    """Block until ``path`` exists (another worker writes it); ``TimeoutError`` says ``what`` did not happen."""
    deadline = time.monotonic() + timeout_s
    while not Path(path).is_file():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what} within {timeout_s:.0f}s ({path} is missing)")
        time.sleep(poll_s)


def merge_shards(shards: Sequence[Shard], directory: str | Path, out_path: str | Path) -> int:
    """Concatenate the shard files in shard order into ``out_path`` (atomically); return the row count."""
    def rows() -> Any:
        for shard in sorted(shards, key=lambda s: s.index):
            yield from read_jsonl(shard.path(directory))

    return write_jsonl(out_path, rows())

