"""The evaluation generation cache lives outside any stage directory: a damaged key or rows file is ignored and
the rows are generated again, never parsed half."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from alignment.evaluation.generation_cache import cached_rows, generation_key, key_file_of

KEY = generation_key("model-fp", [[1, 2]], {"temperature": 0.0})


def producer() -> tuple[Callable[[], list[dict[str, Any]]], list[int]]:
    calls: list[int] = []

    def produce() -> list[dict[str, Any]]:
        calls.append(1)
        return [{"text": f"call {len(calls)}"}, {"text": "second row"}]

    return produce, calls


def cut_rows(path: Path) -> None:
    path.write_text(path.read_text()[:-8])


def flip_rows(path: Path) -> None:
    path.write_text(path.read_text().replace("call 1", "call 9"))


DAMAGE: dict[str, tuple[Callable[[Path], Path], Callable[[Path], object]]] = {
    "empty key file": (key_file_of, lambda p: p.write_text("")),
    "truncated key file": (key_file_of, lambda p: p.write_text(p.read_text()[:10])),
    "key file of another type": (key_file_of, lambda p: p.write_text("[1, 2]")),
    "rows cut short": (lambda p: p, cut_rows),
    "rows changed": (lambda p: p, flip_rows),
    "rows deleted": (lambda p: p, Path.unlink),
}


@pytest.mark.parametrize("kind", sorted(DAMAGE))
def test_a_damaged_cache_is_generated_again(tmp_path: Path, kind: str) -> None:
    produce, calls = producer()
    path = tmp_path / "cache" / "evaluate" / "model.jsonl"
    cached_rows(path, KEY, produce)
    which, damage = DAMAGE[kind]
    damage(which(path))
    rows, reused = cached_rows(path, KEY, produce)
    assert not reused and rows[0] == {"text": "call 2"} and len(calls) == 2
    assert cached_rows(path, KEY, produce) == (rows, True)  # and the rebuilt cache is reused


def test_the_key_file_records_the_key_and_the_rows_sha256_without_temporary_files(tmp_path: Path) -> None:
    import hashlib

    produce, _ = producer()
    path = tmp_path / "model.jsonl"
    cached_rows(path, KEY, produce)
    record = json.loads(key_file_of(path).read_text())
    assert record == {"key": KEY, "sha256": hashlib.sha256(path.read_bytes()).hexdigest()}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.jsonl", "model.jsonl.key.json"]


def test_a_key_file_written_before_the_sha256_was_recorded_is_still_used(tmp_path: Path) -> None:
    produce, calls = producer()
    path = tmp_path / "model.jsonl"
    cached_rows(path, KEY, produce)
    key_file_of(path).write_text(json.dumps({"key": KEY}))
    assert cached_rows(path, KEY, produce)[1] and len(calls) == 1
