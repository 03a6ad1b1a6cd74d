"""Length-bucketed batch streams: less padding, every row once per epoch, exact resume mid-epoch."""

from __future__ import annotations

import random
from functools import partial

import pytest

from alignment.data.collate import collate_preference, collate_prefix_shared
from alignment.data.tokenize import TokenizedPair
from alignment.train.batches import CyclingBatches, WithIds, prefix_shared_length


def pairs(count: int, seed: int = 0) -> list[TokenizedPair]:
    rng = random.Random(seed)

    def ids() -> list[int]:
        return [rng.randrange(1, 50) for _ in range(rng.choice([2, 5, 30, 80]))]

    return [TokenizedPair(f"r{i}", ids(), ids(), ids()) for i in range(count)]


def padded_tokens(stream: CyclingBatches, batches: int) -> int:
    total = 0
    for _ in range(batches):
        mask = stream.next()["attention_mask"]
        total += int(mask.numel() - mask.sum())
    return total


def test_bucketing_reduces_padding():
    data = pairs(96)
    collate = WithIds(partial(collate_preference, pad_id=0))
    plain = CyclingBatches(data, 4, collate, seed=1, bucket_window=1)
    bucketed = CyclingBatches(data, 4, collate, seed=1, bucket_window=8)
    steps = len(plain.sampler)
    assert padded_tokens(bucketed, steps) < 0.6 * padded_tokens(plain, steps)


@pytest.mark.parametrize("window", [1, 8, 64])
def test_every_row_is_used_once_per_epoch(window):
    data = pairs(30)
    stream = CyclingBatches(data, 4, WithIds(partial(collate_preference, pad_id=0)), seed=2, bucket_window=window)
    for epoch in range(2):
        seen = [row for _ in range(len(stream.sampler)) for row in stream.next()["ids"]]
        assert sorted(seen) == sorted(p.id for p in data), epoch
    stream.next()  # the epoch counter moves on when the next epoch's first batch is drawn
    assert stream.epoch == 2


def test_prefix_shared_stream_buckets_by_prompt_plus_both_responses():
    data = pairs(40, seed=4)
    collate = WithIds(partial(collate_prefix_shared, pad_id=0))
    stream = CyclingBatches(data, 4, collate, seed=3, bucket_window=16, length=prefix_shared_length)
    assert list(stream.sampler.lengths) == [prefix_shared_length(p) for p in data]
    assert prefix_shared_length(data[0]) == len(data[0].prompt_ids) + len(data[0].chosen_ids) + len(data[0].rejected_ids)
    assert stream.next()["input_ids"].shape[0] == 4


def test_resume_mid_epoch_is_exact_even_after_a_peek():
    data = pairs(50, seed=5)
    collate = WithIds(partial(collate_preference, pad_id=0))
    straight = CyclingBatches(data, 4, collate, seed=7, bucket_window=4)
    expected = [straight.next()["ids"] for _ in range(20)]
    first = CyclingBatches(data, 4, collate, seed=7, bucket_window=4)
    for _ in range(9):
        first.next()
    first.peek()
    resumed = CyclingBatches(data, 4, collate, seed=7, bucket_window=4)
    resumed.load_state_dict(first.state_dict())
    assert [resumed.next()["ids"] for _ in range(11)] == expected[9:]
    with pytest.raises(ValueError, match="window"):
        CyclingBatches(data, 4, collate, seed=7, bucket_window=2).load_state_dict(first.state_dict())
