"""A candidate pool with known noise: each kind corrupts rows the way it says, labels match, seeds repeat."""

from __future__ import annotations

import random

import pytest

from alignment.filtering.noise import CLEAN, NOISE_KINDS, content_words, corrupt_pool, nearest_by_topic

TOPICS = ["cats", "rivers", "bread", "planets", "guitars", "tax", "tennis", "volcanoes", "coffee", "chess"]


def rows(count: int, offset: int = 0) -> list[dict[str, str]]:
    rng = random.Random(offset)
    out = []
    for i in range(offset, offset + count):
        topic = TOPICS[i % len(TOPICS)]
        words = " ".join(rng.choice(["quite", "very", "often", "rarely", "always"]) for _ in range(14))
        out.append({"instruction": f"Explain {topic} number {i} in detail.", "input": "",
                    "output": f"Answer {i} about {topic}: {words}."})
    return out


def test_each_kind_corrupts_the_rows_it_labels() -> None:
    pool, donors = rows(40), rows(30, offset=100)
    corrupted, labels = corrupt_pool(pool, donors, fraction=0.4, seed=3)
    assert len(corrupted) == len(labels) == 40
    assert {kind: labels.count(kind) for kind in NOISE_KINDS} == dict.fromkeys(NOISE_KINDS, 4)
    assert labels.count(CLEAN) == 24
    outputs = {row["output"] for row in pool}
    for original, row, label in zip(pool, corrupted, labels, strict=True):
        if label == CLEAN:
            assert row == original
        elif label == "swapped":
            assert row["instruction"] == original["instruction"] and row["output"] in outputs
            assert row["output"] != original["output"]
        elif label == "truncated":
            assert original["output"].startswith(row["output"]) and len(row["output"]) < len(original["output"])
            assert not row["output"].endswith(".")
        elif label == "same_topic":
            assert row["output"] in {d["output"] for d in donors}
            assert content_words(row["output"]) & content_words(original["instruction"])  # the same topic word
        else:  # a near duplicate of a clean row of the pool: its answer, its instruction edited slightly
            copies = [c for c, lab in zip(pool, labels, strict=True) if lab == CLEAN and c["output"] == row["output"]]
            assert copies and row["instruction"] != copies[0]["instruction"]
    assert corrupt_pool(pool, donors, 0.4, seed=3) == (corrupted, labels)
    assert corrupt_pool(pool, donors, 0.4, seed=4) != (corrupted, labels)


def test_nearest_by_topic_prefers_shared_words_and_bad_arguments_fail() -> None:
    donors = [{"instruction": "Describe volcanoes of Iceland", "output": "a"},
              {"instruction": "Describe the taste of coffee", "output": "b"}]
    words = [content_words(d["instruction"]) for d in donors]
    assert nearest_by_topic({"instruction": "Why do volcanoes erupt?", "output": "x"}, donors, words)["output"] == "a"
    with pytest.raises(ValueError, match="fraction"):
        corrupt_pool(rows(4), rows(4, 10), fraction=1.0, seed=0)
    with pytest.raises(ValueError, match="unknown noise kinds"):
        corrupt_pool(rows(4), rows(4, 10), fraction=0.5, seed=0, kinds=["typos"])
