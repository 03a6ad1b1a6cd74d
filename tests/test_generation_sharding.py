"""Shard planning, worker assignment, resume after a crash and merging (no model involved)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

from alignment.generation.sharding import (
    Shard,
    merge_shards,
    missing_shards,
    plan_shards,
    run_shards,
    shards_of_worker,
    wait_for_shards,
    worker_rank_and_count,
)


def rows_for(shard: Shard, items: Sequence[int], _advance: Any = None) -> list[dict[str, Any]]:
    return [{"item": item, "shard": shard.index} for item in items]


def test_plan_covers_every_item_once_in_order() -> None:
    shards = plan_shards(10, 4)
    assert [(s.start, s.stop) for s in shards] == [(0, 4), (4, 8), (8, 10)]
    assert {s.count for s in shards} == {3}
    assert shards[1].path("d").name == "shard-00001-of-00003.jsonl"
    assert plan_shards(0, 4) == [Shard(0, 1, 0, 0)]
    with pytest.raises(ValueError, match="shard_size"):
        plan_shards(3, 0)


def test_workers_share_shards_round_robin_without_overlap() -> None:
    shards = plan_shards(100, 7)  # 15 shards over 4 workers
    owned = [shards_of_worker(shards, rank, 4) for rank in range(4)]
    assert sorted(s.index for part in owned for s in part) == list(range(15))
    assert [len(part) for part in owned] == [4, 4, 4, 3]
    assert [s.index for s in owned[1]] == [1, 5, 9, 13]


def test_worker_rank_from_torchrun_then_nodes_then_single() -> None:
    assert worker_rank_and_count({"RANK": "3", "WORLD_SIZE": "4", "NODE_RANK": "1", "NNODES": "2"}) == (3, 4)
    assert worker_rank_and_count({"NODE_RANK": "1", "NNODES": "2"}) == (1, 2)
    assert worker_rank_and_count({}) == (0, 1)
    with pytest.raises(ValueError, match="RANK=4"):
        worker_rank_and_count({"RANK": "4", "WORLD_SIZE": "4"})


def test_a_restart_regenerates_only_the_missing_shards(tmp_path: Path) -> None:
    items = list(range(10))
    shards = plan_shards(len(items), 3)  # 4 shards
    # The crashed run finished shards 0 and 2; shard 3 has a torn file (wrong row count); shard 1 is absent.
    for index in (0, 2):
        shard = shards[index]
        shard.path(tmp_path).write_text("".join(json.dumps(r) + "\n" for r in rows_for(shard, items[shard.start:shard.stop])))
    shards[3].path(tmp_path).write_text('{"item": 9}\n{"item": 99}\n')
    produced: list[int] = []

    def produce(shard: Shard, part: Sequence[int], _advance: Any) -> list[dict[str, Any]]:
        produced.append(shard.index)
        return rows_for(shard, part)

    report = run_shards(items, shards, tmp_path, produce)
    assert produced == [1, 3] and report.generated == [1, 3] and report.reused == [0, 2]
    assert missing_shards(shards, tmp_path) == []
    assert merge_shards(shards, tmp_path, tmp_path / "all.jsonl") == 10
    merged = [json.loads(line) for line in (tmp_path / "all.jsonl").read_text().splitlines()]
    assert [row["item"] for row in merged] == items
    assert run_shards(items, shards, tmp_path, produce).generated == []  # nothing left to do


def test_a_wrong_row_count_is_refused(tmp_path: Path) -> None:
    with pytest.raises(RuntimeError, match="produced 1 rows for 2 items"):
        run_shards([1, 2], plan_shards(2, 2), tmp_path, lambda s, part, _: rows_for(s, part[:1]))
    assert not list(tmp_path.iterdir())


class RecordingBar:
    """Stands in for tqdm: records the total and every update."""

    made: list[RecordingBar] = []

    def __init__(self, total: int, **_: Any):
        self.total = total
        self.updates: list[int] = []
        RecordingBar.made.append(self)

    def __enter__(self) -> RecordingBar:
        return self

    def __exit__(self, *_: object) -> None:
        pass

    def update(self, count: int) -> None:
        self.updates.append(count)

    def set_postfix_str(self, _: str) -> None:
        pass


def test_one_bar_counts_the_items_of_the_missing_shards(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import alignment.generation.sharding as sharding

    monkeypatch.setattr(sharding, "tqdm", RecordingBar)
    items = list(range(10))
    shards = plan_shards(len(items), 4)  # sizes 4, 4, 2; shard 0 is already written
    run_shards(items, shards[:1], tmp_path, rows_for)
    seen: list[int] = []

    def produce(shard: Shard, part: Sequence[int], advance: Any) -> list[dict[str, Any]]:
        advance(1)
        advance(10)  # over-reporting is capped at the shard's size
        seen.append(len(RecordingBar.made[-1].updates))
        return rows_for(shard, part)

    run_shards(items, shards, tmp_path, produce, progress=True)
    bar = RecordingBar.made[-1]
    assert bar.total == 6  # the items of shards 1 and 2 only
    assert bar.updates == [1, 3, 0, 1, 1, 0] and sum(bar.updates) == bar.total
    assert seen == [2, 5]


def test_waiting_for_other_workers_times_out_naming_missing_shards(tmp_path: Path) -> None:
    shards = plan_shards(4, 2)
    run_shards([0, 1, 2, 3], shards[:1], tmp_path, rows_for)
    with pytest.raises(TimeoutError, match="shard-00001-of-00002"):
        wait_for_shards(shards, tmp_path, timeout_s=0.05, poll_s=0.01, announce=lambda _: None)
    run_shards([0, 1, 2, 3], shards, tmp_path, rows_for)
    wait_for_shards(shards, tmp_path, timeout_s=0.05, poll_s=0.01)


def test_local_workers_get_their_own_tensor_parallel_devices() -> None:
    from alignment.generation.sharding import local_devices

    devices = ["0", "1", "2", "3", "4", "5", "6", "7"]
    assert local_devices(devices, 0, 2) == ["0", "1"] and local_devices(devices, 3, 2) == ["6", "7"]
    assert local_devices(["4", "5"], 1, 1) == ["5"]
    with pytest.raises(ValueError, match="only 8 are visible"):
        local_devices(devices, 2, 4)
