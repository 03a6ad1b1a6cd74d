"""End-to-end tests of the ``alignment_run`` command on ``stage=prepare`` with a very small world.

One module-scoped prepare run is shared by the tests that only read it; tests that change a run directory work
on a copy, so each test holds on its own. Two full prepare runs in all: the shared one, and a forced one that
is SIGKILLed once and then resumed.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from pipeline.artifacts import MANIFEST, SUCCESS, describe_outputs, read_manifest
from pipeline.layout import stage_dir
from tests.watchdog import run_watched, wait_until

SCRIPT = Path(sys.executable).with_name("alignment_run")
COMMAND = [str(SCRIPT)] if SCRIPT.is_file() else [sys.executable, "-m", "stages.cli"]
SMALL_WORLD = ["stage=prepare", "world=ci", "world.pretrain_steps=2", "stage.progress=false"]


def cli_env() -> dict[str, str]:
    return {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}


def alignment_run(run_dir: Path, *overrides: str) -> subprocess.CompletedProcess[str]:
    """``alignment_run stage=prepare <small world> run_dir=<run_dir> <overrides>``, run from run_dir's parent."""
    return run_watched([*COMMAND, *SMALL_WORLD, f"run_dir={run_dir}", *overrides], cwd=run_dir.parent,
                       env=cli_env())


def prepare_of(run_dir: Path) -> Path:
    return stage_dir(run_dir, 0, "prepare")


def assert_complete(final: Path) -> dict:
    manifest = read_manifest(final)
    assert describe_outputs(final, sorted(manifest["outputs"])) == manifest["outputs"]
    return manifest


@pytest.fixture(scope="module")
def prepared(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A run directory with one completed small prepare."""
    run_dir = tmp_path_factory.mktemp("cli") / "run"
    result = alignment_run(run_dir)
    assert result.returncode == 0, result.stderr
    assert "done: outputs in" in result.stdout
    return run_dir


def test_prepare_writes_a_complete_artifact(prepared: Path) -> None:
    manifest = assert_complete(prepare_of(prepared))
    assert manifest["stage"] == "prepare" and manifest["round"] == 0
    assert manifest["config"]["world"]["seed"] == 1234
    assert manifest["config"]["world"]["pretrain_steps"] == 2
    assert "model/model.safetensors" in manifest["outputs"]
    assert manifest["outputs"]["world/sft_train.jsonl"]["rows"] == 300
    assert not prepare_of(prepared).with_name("prepare.partial").exists()


def test_saved_config_is_the_resolved_command_line(prepared: Path) -> None:
    saved = OmegaConf.load(prepare_of(prepared) / "config.yaml")
    assert saved.world.sft_train == 300  # from world=ci
    assert saved.world.pretrain_steps == 2  # from the command line
    assert saved.stage.name == "prepare" and saved.stage.progress is False
    assert saved.run_dir == str(prepared)


def test_second_prepare_skips(prepared: Path) -> None:
    before = read_manifest(prepare_of(prepared))
    result = alignment_run(prepared)
    assert result.returncode == 0, result.stderr
    assert f"[prepare] complete with the same fingerprint ({before['fingerprint'][:12]}): skipping" in result.stdout
    assert "pretraining" not in result.stdout
    assert read_manifest(prepare_of(prepared)) == before


def test_runtime_key_change_still_skips(prepared: Path) -> None:
    result = alignment_run(prepared, "stage.log_every=1")
    assert result.returncode == 0, result.stderr
    assert "skipping" in result.stdout


def test_unknown_key_fails_naming_it(tmp_path: Path) -> None:
    for override in ("world.sede=7", "+world.sede=7"):
        result = alignment_run(tmp_path / "run", override)
        assert result.returncode == 2, override
        assert "unknown config key 'world.sede'" in result.stderr
        assert "seed" in result.stderr.split("valid:")[1]
    assert not (tmp_path / "run").exists()


def test_every_invalid_value_is_reported_before_work(tmp_path: Path) -> None:
    result = alignment_run(tmp_path / "run", "world.golden=-1", "world.prompts=-1", "world.corrupt_fraction=2")
    assert result.returncode == 2
    assert "3 problem(s)" in result.stderr
    for key in ("world.golden", "world.prompts", "world.corrupt_fraction"):
        assert key in result.stderr
    assert not (tmp_path / "run").exists()


def kill_once_partial_exists(run_dir: Path, *overrides: str) -> None:
    """Start ``alignment_run`` and SIGKILL its process group as soon as ``prepare.partial`` has started."""
    partial = prepare_of(run_dir).with_name("prepare.partial")
    process = subprocess.Popen([*COMMAND, *SMALL_WORLD, f"run_dir={run_dir}", *overrides], cwd=run_dir.parent,
                               env=cli_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                               start_new_session=True)
    try:
        wait_until((partial / "config.yaml").is_file, "prepare.partial to appear", process)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=30)
    assert process.returncode == -signal.SIGKILL


def test_semantic_change_is_refused_then_forced_through_a_sigkill(prepared: Path, tmp_path: Path) -> None:
    """Refused without force; a forced run killed mid-stage commits nothing; re-running it resumes and completes.

    One test (on a copy of the shared run) so that the forced prepare is also the killed-and-resumed one.
    """
    run_dir = tmp_path / "run"
    shutil.copytree(prepared, run_dir)
    final = prepare_of(run_dir)
    partial = final.with_name("prepare.partial")
    old = read_manifest(final)

    refused = alignment_run(run_dir, "world.seed=7")
    assert refused.returncode == 2
    assert "world.seed: 1234 -> 7" in refused.stderr
    assert "force=true" in refused.stderr
    assert read_manifest(final) == old
    assert sorted(p.name for p in final.parent.iterdir()) == ["prepare", "prepare.lock"]

    kill_once_partial_exists(run_dir, "world.seed=7", "force=true")
    assert not final.exists()  # force moved the old artifact aside; the killed run committed nothing
    assert partial.is_dir()
    assert not (partial / SUCCESS).exists() and not (partial / MANIFEST).exists()
    assert json.loads((partial / "pending.json").read_text())["stage"] == "prepare"

    forced = alignment_run(run_dir, "world.seed=7", "force=true")
    assert forced.returncode == 0, forced.stderr
    assert "resuming partial work" in forced.stdout
    assert not partial.exists()
    stale = sorted(final.parent.glob("prepare.stale-*"))
    assert len(stale) == 1
    assert read_manifest(stale[0]) == old
    new = assert_complete(final)
    assert new["config"]["world"]["seed"] == 7 and new["fingerprint"] != old["fingerprint"]


def test_multirun_sweep_gives_each_model_its_own_run_directory(tmp_path: Path) -> None:
    result = run_watched(
        [*COMMAND, "-m", "model=tiny,small", *SMALL_WORLD, "world.pretrain_batch_size=2", f"run_dir={tmp_path}"],
        env=cli_env(), cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    for size in ("tiny", "small"):
        manifest = assert_complete(tmp_path / f"model={size}" / "round_00" / "prepare")
        assert manifest["config"]["model.size"] == size
