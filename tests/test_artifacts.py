"""Tests for the stage-directory contract (pipeline.artifacts + pipeline.stage_run), without any model.

A tiny fake stage writes ``out.jsonl`` into ``StageRun.work_dir`` from a temp input file; expected hashes are
computed here with hashlib, never by the code under test. Crashes are simulated by raising inside the ``with``
block, by renaming a committed directory back to ``.partial``, and by SIGKILL of a subprocess.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from pipeline.artifacts import (
    MANIFEST,
    PENDING,
    SUCCESS,
    ArtifactError,
    StageInput,
    StageSpec,
    StaleArtifactError,
    compute_fingerprint,
    describe_outputs,
    read_manifest,
)
from pipeline.layout import stage_dir
from pipeline.stage_run import StageRun
from tests.watchdog import wait_for_exit, wait_until

REPO_ROOT = Path(__file__).resolve().parent.parent
# Three non-blank rows and one blank line: "rows" counts the non-blank ones.
OUT_TEXT = '{"a": 1}\n{"a": 2}\n\n{"a": 3}\n'
CONFIG: dict[str, Any] = {"alpha": 1, "nested": {"beta": "x"}}

# A worker process running the fake stage: holds the stage open (after writing out.jsonl) until a release
# file appears, so the test decides when it commits, or kills it while it waits.
WORKER = """
import json, sys, time
from pathlib import Path
from pipeline.artifacts import StageInput, StageSpec
from pipeline.stage_run import StageRun

final, input_path, release, config = Path(sys.argv[1]), sys.argv[2], Path(sys.argv[3]), json.loads(sys.argv[4])
spec = StageSpec(stage="fake", stage_version=1, round_index=0, config=config, inputs={"data": StageInput(input_path)})
with StageRun(final, spec) as run:
    if run.skipped:
        print("RESULT skipped", flush=True)
    else:
        (run.work_dir / "out.jsonl").write_text(sys.argv[5])
        print("RESULT working", flush=True)
        while not release.exists():  # the test kills a worker it does not release
            time.sleep(0.05)
        run.commit(outputs=["out.jsonl"])
        print("RESULT committed", flush=True)
"""


@pytest.fixture
def input_file(tmp_path: Path) -> Path:
    path = tmp_path / "input.txt"
    path.write_text("input rows\n")
    return path


@pytest.fixture
def final(tmp_path: Path) -> Path:
    return stage_dir(tmp_path / "run", 0, "fake")


def make_spec(input_file: Path, config: dict[str, Any] | None = None) -> StageSpec:
    return StageSpec(stage="fake", stage_version=1, round_index=0, config=config or CONFIG,
                     inputs={"data": StageInput(str(input_file))})


def run_fake(final: Path, spec: StageSpec, force: bool = False,
             messages: list[str] | None = None) -> tuple[StageRun, int]:
    """Run the fake stage once; returns the StageRun and how many times the work was done (0 or 1)."""
    announce: Callable[[str], None] = messages.append if messages is not None else (lambda _m: None)
    worked = 0
    with StageRun(final, spec, force=force, announce=announce) as run:
        if not run.skipped:
            worked = 1
            (run.work_dir / "out.jsonl").write_text(OUT_TEXT)
            run.commit(outputs=["out.jsonl"], metrics={"score": 0.5})
    return run, worked


def siblings(final: Path, marker: str) -> list[Path]:
    return sorted(p for p in final.parent.iterdir() if p.name.startswith(final.name + marker))


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# --- fresh run, skip, stale, force -----------------------------------------------------------------------------


def test_fresh_run_commits_manifest_and_success(final: Path, input_file: Path) -> None:
    run, worked = run_fake(final, make_spec(input_file))
    assert worked == 1
    assert (final / SUCCESS).is_file() and (final / MANIFEST).is_file()
    assert not (final / PENDING).exists()
    assert not final.with_name("fake.partial").exists()
    manifest = read_manifest(final)
    assert manifest == run.manifest
    assert manifest["outputs"] == {
        "out.jsonl": {"sha256": sha256_hex(OUT_TEXT.encode()), "bytes": len(OUT_TEXT.encode()), "rows": 3}
    }
    input_sha = sha256_hex(input_file.read_bytes())
    assert manifest["inputs"] == {"data": {"path": str(input_file), "fingerprint": input_sha}}
    assert manifest["fingerprint"] == compute_fingerprint("fake", 1, CONFIG, {"data": input_sha})
    assert manifest["config"] == CONFIG
    assert manifest["stage"] == "fake" and manifest["stage_version"] == 1 and manifest["round"] == 0
    assert manifest["metrics"] == {"score": 0.5}
    assert manifest["env"]["python"] == platform.python_version()
    assert "torch" in manifest["env"]
    assert manifest["timestamps"]["finished"] >= manifest["timestamps"]["started"]


def test_second_run_skips_without_working(final: Path, input_file: Path) -> None:
    first, _ = run_fake(final, make_spec(input_file))
    messages: list[str] = []
    second, worked = run_fake(final, make_spec(input_file), messages=messages)
    assert worked == 0 and second.skipped
    assert second.manifest == first.manifest
    assert any("skipping" in m for m in messages)
    assert not second.work_dir.exists()
    with pytest.raises(ArtifactError, match="skipped"):
        second.commit(outputs=["out.jsonl"])


def test_changed_config_is_refused_with_a_diff(final: Path, input_file: Path) -> None:
    run_fake(final, make_spec(input_file))
    changed = {"alpha": 2, "nested": {"beta": "y"}}
    with pytest.raises(StaleArtifactError) as raised:
        run_fake(final, make_spec(input_file, changed))
    message = str(raised.value)
    assert "alpha: 1 -> 2" in message
    assert 'nested.beta: "x" -> "y"' in message
    assert "force=true" in message
    assert "input data" not in message
    assert read_manifest(final)["config"] == CONFIG  # the refused run touched nothing
    assert siblings(final, ".") == [final.with_name("fake.lock")]


def test_changed_input_content_is_refused_with_an_input_line(final: Path, input_file: Path) -> None:
    run_fake(final, make_spec(input_file))
    old_sha = sha256_hex(input_file.read_bytes())
    input_file.write_text("other rows\n")
    with pytest.raises(StaleArtifactError) as raised:
        run_fake(final, make_spec(input_file))
    message = str(raised.value)
    new_sha = sha256_hex(input_file.read_bytes())
    assert f"input data: content changed ({old_sha[:12]} -> {new_sha[:12]})" in message
    assert "alpha" not in message


def test_force_keeps_the_stale_dir_and_recomputes(final: Path, input_file: Path) -> None:
    run_fake(final, make_spec(input_file))
    old_fingerprint = read_manifest(final)["fingerprint"]
    changed = {"alpha": 2, "nested": {"beta": "x"}}
    run, worked = run_fake(final, make_spec(input_file, changed), force=True)
    assert worked == 1
    stale = siblings(final, ".stale-")
    assert len(stale) == 1
    assert read_manifest(stale[0])["fingerprint"] == old_fingerprint
    assert read_manifest(stale[0])["config"] == CONFIG
    assert read_manifest(final)["config"] == changed
    assert read_manifest(final)["fingerprint"] == run.fingerprint != old_fingerprint


def test_force_on_a_matching_artifact_redoes_it_and_keeps_the_old_one(final: Path, input_file: Path) -> None:
    first, _ = run_fake(final, make_spec(input_file))
    run, worked = run_fake(final, make_spec(input_file), force=True)
    assert worked == 1 and not run.skipped
    replaced = siblings(final, ".replaced-")
    assert len(replaced) == 1
    assert read_manifest(replaced[0]) == first.manifest
    assert siblings(final, ".stale-") == []
    assert read_manifest(final)["fingerprint"] == first.manifest["fingerprint"]
    assert read_manifest(final)["timestamps"] != first.manifest["timestamps"]


# --- partial work ------------------------------------------------------------------------------------------------


def crash_after_writing(final: Path, spec: StageSpec, name: str) -> None:
    """A run that writes ``name`` into its work dir and then fails."""
    with pytest.raises(RuntimeError, match="boom"), StageRun(final, spec, announce=lambda _m: None) as run:
        assert not run.resuming
        (run.work_dir / name).write_text("half done\n")
        raise RuntimeError("boom")


def test_partial_with_same_fingerprint_resumes_and_keeps_files(final: Path, input_file: Path) -> None:
    spec = make_spec(input_file)
    crash_after_writing(final, spec, "checkpoint.txt")
    assert not final.exists()
    assert not (final.with_name("fake.partial") / SUCCESS).exists()
    with StageRun(final, spec, announce=lambda _m: None) as run:
        assert run.resuming and not run.skipped
        assert (run.work_dir / "checkpoint.txt").read_text() == "half done\n"
        (run.work_dir / "out.jsonl").write_text(OUT_TEXT)
        run.commit(outputs=["out.jsonl"])
    assert (final / "checkpoint.txt").is_file()
    assert read_manifest(final)["fingerprint"] == spec.fingerprint()


def test_partial_from_another_fingerprint_is_set_aside(final: Path, input_file: Path) -> None:
    crash_after_writing(final, make_spec(input_file), "checkpoint.txt")
    changed = {"alpha": 2, "nested": {"beta": "x"}}
    messages: list[str] = []
    with StageRun(final, make_spec(input_file, changed), announce=messages.append) as run:
        assert not run.resuming
        assert not (run.work_dir / "checkpoint.txt").exists()
        (run.work_dir / "out.jsonl").write_text(OUT_TEXT)
        run.commit(outputs=["out.jsonl"])
    abandoned = siblings(final, ".partial.abandoned-")
    assert len(abandoned) == 1
    assert (abandoned[0] / "checkpoint.txt").read_text() == "half done\n"
    assert any("abandoned" in m for m in messages)
    assert read_manifest(final)["config"] == changed


def test_crash_between_manifest_and_rename_is_completed(final: Path, input_file: Path) -> None:
    spec = make_spec(input_file)
    first, _ = run_fake(final, spec)
    # the state commit() leaves if it dies just before its final rename: manifest + _SUCCESS in .partial
    os.rename(final, final.with_name("fake.partial"))
    messages: list[str] = []
    run, worked = run_fake(final, spec, messages=messages)
    assert worked == 0 and run.skipped
    assert any("completed the rename" in m for m in messages)
    assert not final.with_name("fake.partial").exists()
    assert siblings(final, ".partial.abandoned-") == []
    assert read_manifest(final) == first.manifest


def test_committed_partial_with_tampered_outputs_is_redone(final: Path, input_file: Path) -> None:
    spec = make_spec(input_file)
    run_fake(final, spec)
    partial = final.with_name("fake.partial")
    os.rename(final, partial)
    (partial / "out.jsonl").write_text("truncated")
    run, worked = run_fake(final, spec)
    assert worked == 1 and run.resuming
    assert read_manifest(final)["outputs"]["out.jsonl"]["sha256"] == sha256_hex(OUT_TEXT.encode())


def test_read_manifest_refuses_a_dir_without_success(tmp_path: Path) -> None:
    directory = tmp_path / "half"
    directory.mkdir()
    (directory / MANIFEST).write_text(json.dumps({"fingerprint": "abc"}))
    with pytest.raises(ArtifactError, match=SUCCESS):
        read_manifest(directory)


def test_declared_output_that_was_not_written_fails_the_commit(final: Path, input_file: Path) -> None:
    with pytest.raises(ArtifactError, match="missing.jsonl"), StageRun(final, make_spec(input_file),
                                                                        announce=lambda _m: None) as run:
        run.commit(outputs=["missing.jsonl"])
    assert not final.exists()


# --- concurrency and SIGKILL -------------------------------------------------------------------------------------


def start_worker(final: Path, input_file: Path, release: Path, log: Path) -> subprocess.Popen[bytes]:
    with open(log, "wb") as out:
        return subprocess.Popen(
            [sys.executable, "-u", "-c", WORKER, str(final), str(input_file), str(release), json.dumps(CONFIG),
             OUT_TEXT],
            stdout=out, stderr=subprocess.STDOUT, cwd=REPO_ROOT, start_new_session=True,
        )


@pytest.fixture
def workers() -> Iterator[list[subprocess.Popen[bytes]]]:
    started: list[subprocess.Popen[bytes]] = []
    yield started
    for process in started:  # never leave a worker behind when an assertion fails
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


def test_concurrent_invocations_do_the_work_once(tmp_path: Path, final: Path, input_file: Path,
                                                 workers: list[subprocess.Popen[bytes]]) -> None:
    release = tmp_path / "release"
    log_a, log_b = tmp_path / "a.log", tmp_path / "b.log"
    workers.append(start_worker(final, input_file, release, log_a))
    wait_until(lambda: "RESULT working" in log_a.read_text(), "worker A to start working", workers[0])
    workers.append(start_worker(final, input_file, release, log_b))
    wait_until(lambda: "waiting for it" in log_b.read_text(), "worker B to wait on the lock", workers[1])
    assert not final.exists()
    release.touch()
    for process in workers:
        assert wait_for_exit(process) == 0
    text_a, text_b = log_a.read_text(), log_b.read_text()
    assert "RESULT committed" in text_a and "RESULT skipped" not in text_a
    assert "RESULT skipped" in text_b and "RESULT working" not in text_b
    manifest = read_manifest(final)
    assert describe_outputs(final, ["out.jsonl"]) == manifest["outputs"]
    assert manifest["fingerprint"] == make_spec(input_file).fingerprint()


def test_sigkill_mid_stage_leaves_no_success_and_next_run_completes(
        tmp_path: Path, final: Path, input_file: Path, workers: list[subprocess.Popen[bytes]]) -> None:
    partial = final.with_name("fake.partial")
    log = tmp_path / "worker.log"
    workers.append(start_worker(final, input_file, tmp_path / "never", log))
    wait_until(lambda: "RESULT working" in log.read_text(), "the worker to write its output", workers[0])
    os.killpg(workers[0].pid, signal.SIGKILL)
    assert workers[0].wait(timeout=30) == -signal.SIGKILL
    assert not final.exists()
    assert partial.is_dir() and not (partial / SUCCESS).exists() and not (partial / MANIFEST).exists()
    with StageRun(final, make_spec(input_file), announce=lambda _m: None) as run:
        assert run.resuming  # the killed run's lock died with it: no waiting here
        assert (run.work_dir / "out.jsonl").read_text() == OUT_TEXT
        run.commit(outputs=["out.jsonl"])
    assert read_manifest(final)["outputs"]["out.jsonl"]["rows"] == 3
    assert not partial.exists()
