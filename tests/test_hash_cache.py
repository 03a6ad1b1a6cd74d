"""Persistent file-hash cache: a file is read once per (path, size, mtime, ctime, inode); any change of those
re-reads it; racy (just-written) files are not trusted; a corrupt or unwritable cache file never breaks hashing;
the digest is always the file's true sha256."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from alignment.hashing import (
    HASH_CACHE_NAME,
    directory_fingerprint,
    file_hash_reads,
    flush_hash_cache,
    reset_hash_memo,
    sha256_file,
)

HOUR_NS = 3600 * 10**9
REPO_ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def cache_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    directory = tmp_path / "hash-cache"
    monkeypatch.setenv("ALIGNMENT_CACHE_DIR", str(directory))
    monkeypatch.delenv("ALIGNMENT_HASH_CACHE", raising=False)
    reset_hash_memo()
    yield directory
    reset_hash_memo()


def aged_file(path: Path, data: bytes, age_ns: int = HOUR_NS) -> Path:
    """``data`` written to ``path`` with an mtime ``age_ns`` in the past (a file that is not being written)."""
    path.write_bytes(data)
    stamp = time.time_ns() - age_ns
    os.utime(path, ns=(stamp, stamp))
    return path


def reads_during(action) -> int:
    before = file_hash_reads()
    action()
    return file_hash_reads() - before


def test_hashing_twice_reads_the_file_once_and_the_digest_is_the_true_sha256(tmp_path):
    data = os.urandom(3 << 20)  # several read chunks
    path = aged_file(tmp_path / "weights.bin", data)
    digests: list[str] = []
    assert reads_during(lambda: digests.extend(sha256_file(path) for _ in range(3))) == 1
    assert digests == [hashlib.sha256(data).hexdigest()] * 3
    assert reads_during(lambda: sha256_file(path, use_cache=False)) == 1  # a forced read


def test_a_new_process_reuses_the_cache_file(tmp_path, cache_dir):
    path = aged_file(tmp_path / "model.safetensors", b"weights" * 1000)
    expected = sha256_file(path)
    flush_hash_cache()
    code = ("from alignment.hashing import sha256_file, file_hash_reads; "
            f"print(sha256_file({str(path)!r}), file_hash_reads())")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                            env={**os.environ, "PYTHONPATH": str(REPO_ROOT)})
    assert result.stdout.split() == [expected, "0"]


def test_touching_mtime_changing_size_or_content_rehashes(tmp_path):
    path = aged_file(tmp_path / "f.bin", b"a" * 100)
    sha256_file(path)
    stamp = time.time_ns() - 2 * HOUR_NS
    os.utime(path, ns=(stamp, stamp))  # touched, same bytes
    assert reads_during(lambda: sha256_file(path)) == 1
    aged_file(path, b"a" * 101)  # size changed
    assert sha256_file(path) == hashlib.sha256(b"a" * 101).hexdigest()
    aged_file(path, b"b" * 101, age_ns=3 * HOUR_NS)  # same size, new content, new mtime
    assert sha256_file(path) == hashlib.sha256(b"b" * 101).hexdigest()
    assert reads_during(lambda: sha256_file(path)) == 0


def test_content_changed_with_the_old_mtime_restored_is_caught_by_ctime(tmp_path):
    path = aged_file(tmp_path / "f.bin", b"x" * 64)
    old = path.stat().st_mtime_ns
    sha256_file(path)
    time.sleep(0.02)  # past the filesystem's timestamp tick, so the rewrite gets a later ctime
    path.write_bytes(b"y" * 64)
    os.utime(path, ns=(old, old))  # size and mtime as before; only ctime tells
    assert sha256_file(path) == hashlib.sha256(b"y" * 64).hexdigest()


def test_a_just_written_file_is_not_trusted_until_it_has_aged(tmp_path):
    path = tmp_path / "fresh.bin"
    path.write_bytes(b"fresh")
    assert reads_during(lambda: [sha256_file(path) for _ in range(2)]) == 2
    aged_file(path, b"fresh")
    assert reads_during(lambda: [sha256_file(path) for _ in range(2)]) == 1


def test_a_symlink_shares_the_entry_of_its_target(tmp_path):
    target = aged_file(tmp_path / "blob", b"shared")
    (tmp_path / "link").symlink_to(target)
    sha256_file(target)
    assert reads_during(lambda: sha256_file(tmp_path / "link")) == 0


@pytest.mark.parametrize("garbage", [b"\x00\xffnot json", b'{"format": "other", "entries": {}}',
                                     b'{"format": "file_sha256/1", "entries": []}'])
def test_a_corrupt_cache_file_is_ignored_and_rewritten(tmp_path, cache_dir, garbage):
    path = aged_file(tmp_path / "f.bin", b"payload")
    cache_dir.mkdir()
    (cache_dir / HASH_CACHE_NAME).write_bytes(garbage)
    assert sha256_file(path) == hashlib.sha256(b"payload").hexdigest()
    flush_hash_cache()
    entries = json.loads((cache_dir / HASH_CACHE_NAME).read_text())["entries"]
    assert entries[os.path.realpath(path)]["sha256"] == hashlib.sha256(b"payload").hexdigest()


def test_a_tampered_entry_is_dropped_not_believed(tmp_path, cache_dir):
    path = aged_file(tmp_path / "f.bin", b"payload")
    sha256_file(path)
    flush_hash_cache()
    cache_file = cache_dir / HASH_CACHE_NAME
    data = json.loads(cache_file.read_text())
    data["entries"][os.path.realpath(path)]["sha256"] = "not-a-digest"
    cache_file.write_text(json.dumps(data))
    reset_hash_memo()
    assert reads_during(lambda: sha256_file(path)) == 1


def test_concurrent_writers_merge_their_entries(tmp_path, cache_dir):
    mine, theirs = aged_file(tmp_path / "mine", b"1" * 10), aged_file(tmp_path / "theirs", b"2" * 10)
    sha256_file(mine)  # pending in this process
    code = f"from alignment.hashing import sha256_file; sha256_file({str(theirs)!r})"
    subprocess.run([sys.executable, "-c", code], check=True, env={**os.environ, "PYTHONPATH": str(REPO_ROOT)})
    flush_hash_cache()  # merges with what the other process wrote at its exit
    entries = json.loads((cache_dir / HASH_CACHE_NAME).read_text())["entries"]
    assert {os.path.realpath(mine), os.path.realpath(theirs)} <= set(entries)
    reset_hash_memo()
    assert reads_during(lambda: (sha256_file(mine), sha256_file(theirs))) == 0


def test_an_unwritable_cache_directory_only_warns(tmp_path, monkeypatch):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    monkeypatch.setenv("ALIGNMENT_CACHE_DIR", str(blocker / "below"))
    path = aged_file(tmp_path / "f.bin", b"z" * (65 << 20))  # large enough to save at once
    with pytest.warns(UserWarning, match="not writable"):
        digest = sha256_file(path)
    assert digest == hashlib.sha256(b"z" * (65 << 20)).hexdigest()
    assert reads_during(lambda: sha256_file(path)) == 0  # still remembered in memory


def test_directory_fingerprint_equals_the_artifact_input_fingerprint_and_tracks_content(tmp_path):
    from pipeline.artifacts import input_fingerprint

    model = tmp_path / "model"
    (model / "sub").mkdir(parents=True)
    aged_file(model / "config.json", b"{}")
    aged_file(model / "sub" / "model.safetensors", b"w" * 1000)
    first = directory_fingerprint(model)
    assert first == input_fingerprint(model)
    assert reads_during(lambda: directory_fingerprint(model)) == 0
    aged_file(model / "sub" / "model.safetensors", b"v" * 1000, age_ns=2 * HOUR_NS)
    assert directory_fingerprint(model) != first
