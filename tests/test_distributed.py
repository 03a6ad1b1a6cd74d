"""Two CPU processes (torchrun, gloo): every rank picks the same objective at every step and ends with
identical weights, for ALRIGHT and MAXRIGHT, through the real joint_train stage."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from pipeline.artifacts import read_manifest
from pipeline.layout import stage_dir
from tests.conftest import SMALL_WORLD
from tests.watchdog import run_watched

ROOT = Path(__file__).resolve().parent.parent


def launch(worker: str, *args: str, ranks: int = 2) -> subprocess.CompletedProcess[str]:
    """``torchrun`` of ``tests/<worker>`` on ``ranks`` CPU processes, one thread each."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={ranks}",
               str(ROOT / "tests" / worker), *args]
    return run_watched(command, env=env, cwd=ROOT)


def torchrun(out: Path, *overrides: str) -> subprocess.CompletedProcess[str]:
    return launch("dist_worker.py", str(out), *overrides)


@pytest.mark.parametrize("objective", ["alright", "maxright"])
def test_two_ranks_agree_on_every_objective_and_end_identical(world_run_dir, tmp_path, objective):
    run_dir = world_run_dir()
    result = torchrun(tmp_path, *SMALL_WORLD, f"run_dir={run_dir}", f"objective={objective}", "objective.lambd=0.5",
                      "objective.refresh_every=2", "objective.sft_opt=1.7", "objective.dpo_opt=0.6",
                      "stage.train.max_steps=8", "stage.train.eval_every=4",
                      "stage.train.sft_batch_size=4", "stage.train.pref_batch_size=4", "stage.verifier_eval=false",
                      "stage.progress=false")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert ranks[0]["world_size"] == "2"
    assert len(ranks[0]["plans"]) == 8
    assert ranks[0]["plans"] == ranks[1]["plans"]
    if objective == "alright":  # λ=0.5 over 8 draws of this seed trains both objectives
        assert {tuple(p) for p in ranks[0]["plans"]} == {(0,), (1,)}
    assert ranks[0]["checksum"] == ranks[1]["checksum"]
    assert ranks[0]["abs_checksum"] == ranks[1]["abs_checksum"]
    manifest = read_manifest(stage_dir(run_dir, 0, "joint_train"))
    assert sum(manifest["metrics"]["steps_per_objective"].values()) == 8


def test_ranks_exit_cleanly_after_the_runner_leaves_the_group():
    """A rank whose stage has committed must still exit with 0. The abort this guards against is intermittent
    (SIGABRT, ``terminate called without an active exception``, from gloo's threads at interpreter exit): measured
    on 2 ranks, 5 of 12 launches without the collection and the barrier, 2 of 42 with the barrier only, 0 of 48
    with the collection. Sixteen rank exits catch a change that makes it common, not every rare one."""
    for _ in range(4):
        result = launch("dist_exit_worker.py", ranks=4)
        assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
