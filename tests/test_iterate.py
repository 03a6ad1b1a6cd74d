"""The iterative loop for real: ``recipes/iterative/run.sh`` with the toy recipe (2 rounds), a ``stage=iterate``
run killed in round 1's joint_train and re-run, the same round under ``torchrun`` with 2 processes, and the
script's own wiring (with a stand-in ``alignment_run``)."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from pipeline.artifacts import is_complete, partial_dir, read_manifest
from pipeline.layout import stage_dir
from tests.watchdog import run_watched, wait_until

ROOT = Path(__file__).resolve().parent.parent
RUN_SH = ROOT / "recipes" / "iterative" / "run.sh"
TOY_STAGES = ("create_instructions", "generate", "rank", "joint_train", "evaluate")
STEPS = 12
S = "++recipe.stage_settings"  # ++: add a key the recipe file does not set, or override one it does
# Tiny budgets; generation with hf (vLLM start-up costs more than the work here). SFT is held out on the golden
# rows the toy recipe trains on, so the sft_loss suite measures whether each round learns its training data.
TOY = ("world=ci", "stage.progress=false", "data.sft_eval.path=world:golden", "data.eval_tasks.max_rows=40",
       f"{S}.create_instructions.n_instructions=48", f"{S}.generate.backend=hf", f"{S}.evaluate.backend=hf",
       f"{S}.evaluate.suites=[verifier,sft_loss]", f"{S}.joint_train.train.max_steps={STEPS}",
       f"{S}.joint_train.train.eval_every=4", f"{S}.joint_train.train.save_every=4")


def environment(**extra: str) -> dict[str, str]:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "VLLM_CPU_KVCACHE_SPACE": "1",
           "VLLM_ENABLE_V1_MULTIPROCESSING": "0", "TOKENIZERS_PARALLELISM": "false", "PYTHONPATH": str(ROOT)}
    installed = Path(sys.executable).with_name("alignment_run")
    if installed.exists():
        env["ALIGNMENT_RUN"] = str(installed)
    return {**env, **extra}


def run_script(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return run_watched(["bash", str(RUN_SH), *args], env=environment(**env), cwd=ROOT)


def output_tail(result: subprocess.CompletedProcess[str]) -> str:
    return result.stdout[-3000:] + result.stderr[-3000:]


def toy(world: Path) -> tuple[str, ...]:
    return (*TOY, f"world_dir={world}")


def manifest(run_dir: Path, round_index: int, stage: str) -> dict[str, Any]:
    return read_manifest(stage_dir(run_dir, round_index, stage))


def summary(run_dir: Path) -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads((run_dir / "iterate" / "summary.json").read_text())
    return loaded


@pytest.fixture(scope="module")
def scripted(prepared_world: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two rounds of the toy recipe through run.sh (one process per stage)."""
    run_dir = tmp_path_factory.mktemp("iterate") / "script"
    result = run_script("--recipe", "toy", "--rounds", "2", "--run-dir", str(run_dir), *toy(prepared_world))
    assert result.returncode == 0, output_tail(result)
    return run_dir


def test_run_sh_completes_both_rounds_and_summarises_them(scripted: Path) -> None:
    for k in (0, 1):
        for stage in TOY_STAGES:
            assert is_complete(stage_dir(scripted, k, stage)), (k, stage)
    assert not [p for p in scripted.rglob("*.partial")]
    rows = summary(scripted)["rows"]
    assert [row["round"] for row in rows] == ["base", 0, 1]
    table = (scripted / "iterate" / "summary.md").read_text()
    assert "| round | sample_score | pairs | train_steps |" in table and "verifier/accuracy" in table
    assert (scripted / "iterate" / "verifier_accuracy.png").is_file()
    first, second = manifest(scripted, 0, "evaluate")["metrics"], manifest(scripted, 1, "evaluate")["metrics"]
    assert rows[0]["verifier/accuracy"] == first["verifier/policy/accuracy"]
    for k, evaluated in ((0, first), (1, second)):
        row = rows[k + 1]
        assert row["verifier/accuracy"] == evaluated["verifier/round_joint_train/accuracy"]
        assert row["pairs"] == manifest(scripted, k, "rank")["metrics"]["pairs"] > 0
        assert row["train_steps"] == STEPS
        assert 0.0 <= row["verifier/accuracy"] <= 1.0
        assert row["sample_score"] == manifest(scripted, k, "rank")["metrics"]["mean_score"]
    # at this budget accuracy is noise; tests/test_iterate_improves.py runs the recipe's real budget


def test_round_one_starts_from_round_zeros_model(scripted: Path) -> None:
    artifact = stage_dir(scripted, 0, "joint_train")
    trained = str(artifact / "model")
    assert manifest(scripted, 1, "generate")["inputs"]["policy"]["path"] == str(artifact)
    assert manifest(scripted, 1, "joint_train")["inputs"]["policy"]["path"] == str(artifact)
    assert manifest(scripted, 1, "joint_train")["inputs"]["policy"]["loaded"] == trained
    assert manifest(scripted, 1, "evaluate")["inputs"]["model:policy"]["path"] == str(artifact)
    assert manifest(scripted, 1, "evaluate")["inputs"]["model:policy"]["loaded"] == trained
    assert manifest(scripted, 1, "joint_train")["inputs"]["data.preference"]["path"] == str(
        stage_dir(scripted, 1, "rank") / "pairs.jsonl")
    # the same model, greedy decoding, the same tasks: round 1's "before" is exactly round 0's "after"
    first, second = manifest(scripted, 0, "evaluate")["metrics"], manifest(scripted, 1, "evaluate")["metrics"]
    for metric in ("verifier/{}/accuracy", "sft_loss/{}/sft_loss"):
        assert second[metric.format("policy")] == first[metric.format("round_joint_train")]
    prompts = [stage_dir(scripted, k, "create_instructions") / "prompts.jsonl" for k in (0, 1)]
    assert prompts[0].read_text() != prompts[1].read_text()  # every round gets fresh prompts


def latest_checkpoint_exists(directory: Path) -> bool:
    try:
        return any(p.name.startswith("step-") and not p.name.endswith(".tmp") for p in directory.iterdir())
    except FileNotFoundError:
        return False


def kill_when(process: subprocess.Popen[str], ready: Path, log: Path) -> None:
    """SIGKILL ``process``'s group as soon as ``ready`` holds a finished checkpoint."""
    try:
        wait_until(lambda: latest_checkpoint_exists(ready), f"a checkpoint in {ready}", process, watch=[log])
    except AssertionError as error:
        raise AssertionError(f"{error}:\n{log.read_text()[-3000:]}") from None
    finally:
        with contextlib.suppress(ProcessLookupError):  # it may have ended on its own
            os.killpg(process.pid, signal.SIGKILL)
        process.wait()


def content(stage_manifest: dict[str, Any]) -> dict[str, str]:
    """sha256 of every output but the logs and the saved config (which holds the run directory)."""
    return {name: entry["sha256"] for name, entry in stage_manifest["outputs"].items()
            if not name.startswith("logs/") and name != "config.yaml"}


def assert_close(actual: Any, expected: Any, where: str, tol: float = 1e-5) -> None:
    if isinstance(expected, float):
        assert actual == pytest.approx(expected, abs=tol), where
    elif isinstance(expected, list):
        assert len(actual) == len(expected), where
        for index, (mine, theirs) in enumerate(zip(actual, expected, strict=True)):
            assert_close(mine, theirs, f"{where}[{index}]", tol)
    elif isinstance(expected, dict):
        assert set(actual) == set(expected), where
        for key in expected:
            assert_close(actual[key], expected[key], f"{where}.{key}", tol)
    else:
        assert actual == expected, where


def test_a_run_killed_in_round_one_training_resumes_to_the_uninterrupted_numbers(
        scripted: Path, prepared_world: Path, tmp_path: Path) -> None:
    run_dir, log = tmp_path / "crashed", tmp_path / "first.log"
    command = [sys.executable, "-m", "stages.cli", "stage=iterate", "recipe=toy", "rounds=2", f"run_dir={run_dir}",
               *toy(prepared_world)]
    with open(log, "w") as handle:
        process = subprocess.Popen(command, env=environment(), cwd=ROOT, stdout=handle, stderr=subprocess.STDOUT,
                                   text=True, start_new_session=True)
        kill_when(process, partial_dir(stage_dir(run_dir, 1, "joint_train")) / "checkpoints", log)
    assert not is_complete(stage_dir(run_dir, 1, "joint_train"))  # killed in the middle of round 1's training
    assert not stage_dir(run_dir, 1, "evaluate").exists()
    rerun = run_watched(command, env=environment(), cwd=ROOT)
    assert rerun.returncode == 0, output_tail(rerun)
    assert "[train] resumed from" in rerun.stdout
    assert rerun.stdout.count("skipping") == len(TOY_STAGES) + 3  # round 0 and round 1 up to rank
    # stage=iterate and run.sh run the same stage configs: every artifact before the crash is identical (the
    # evaluate reports name the run directory, so their numbers are compared instead, through the summary)
    for k, stage in [(0, s) for s in TOY_STAGES] + [(1, "create_instructions"), (1, "generate"), (1, "rank")]:
        ours, theirs = manifest(run_dir, k, stage), manifest(scripted, k, stage)
        assert ours["fingerprint"] == theirs["fingerprint"], (k, stage)
        if stage != "evaluate":
            assert content(ours) == content(theirs), (k, stage)
    resumed, straight = manifest(run_dir, 1, "joint_train")["metrics"], manifest(scripted, 1, "joint_train")["metrics"]
    evals = {key: value for key, value in straight.items() if key.startswith("eval/")}
    assert evals and resumed["steps"] == straight["steps"] == STEPS
    assert_close({key: resumed[key] for key in evals}, evals, "joint_train")
    assert resumed["steps_per_objective"] == straight["steps_per_objective"]
    assert_close(summary(run_dir)["rows"], summary(scripted)["rows"], "summary")


@pytest.mark.slow  # about 2 minutes: every stage starts two processes
def test_every_stage_of_a_round_runs_under_torchrun_with_two_processes(scripted: Path, prepared_world: Path,
                                                                       tmp_path: Path) -> None:
    run_dir = tmp_path / "two"
    launcher = f"{sys.executable} -m torch.distributed.run --standalone --nproc_per_node 2 -m stages.cli"
    shards = (f"{S}.generate.shard_size=16", f"{S}.rank.shard_size=16")  # runtime fields: 3 shards, 2 workers
    result = run_script("--recipe", "toy", "--rounds", "1", "--run-dir", str(run_dir), *toy(prepared_world),
                        *shards, LAUNCHER=launcher)
    assert result.returncode == 0, output_tail(result)
    for stage in TOY_STAGES:
        assert is_complete(stage_dir(run_dir, 0, stage)), stage
    for stage in ("generate", "rank"):
        metrics = manifest(run_dir, 0, stage)["metrics"]
        assert metrics["workers"] == 2 and metrics["shards"]["total"] == 3, stage
    assert manifest(run_dir, 0, "joint_train")["metrics"]["steps"] == STEPS
    assert [row["round"] for row in summary(run_dir)["rows"]] == ["base", 0]
    # hf sampling is seeded per batch of prompts, so two workers write what one process wrote
    for stage, output in (("generate", "responses.jsonl"), ("rank", "pairs.jsonl")):
        ours, theirs = manifest(run_dir, 0, stage), manifest(scripted, 0, stage)
        assert ours["fingerprint"] == theirs["fingerprint"], stage
        assert ours["outputs"][output]["sha256"] == theirs["outputs"][output]["sha256"], stage


# --- run.sh's own wiring, with a stand-in for alignment_run ---------------------------------------------------------

FAKE = """#!/usr/bin/env bash
echo "{name} $*" >> "$CALLS"
rounds="${{PLAN_ROUNDS:-1}}"  # the recipe's rounds, unless the command line says rounds=N
for arg in "$@"; do [[ "$arg" == rounds=* ]] && rounds="${{arg#rounds=}}"; done
for arg in "$@"; do
  if [[ "$arg" == stage.list_stages=true ]]; then
    [[ -n "${{FAIL_PLAN:-}}" ]] && {{ echo "error: invalid configuration" >&2; exit 2; }}
    printf 'rounds %s\\nrun_dir %s\\nstage generate\\nstage rank\\n' "$rounds" /runs/planned
  fi
done
"""


@pytest.fixture
def fake(tmp_path: Path) -> dict[str, str]:
    """Environment for run.sh with stand-in ``alignment_run`` and launcher scripts that record their calls."""
    paths = {}
    for name in ("alignment_run", "launcher"):
        path = tmp_path / name
        path.write_text(FAKE.format(name=name))
        path.chmod(0o755)
        paths[name] = str(path)
    return {"ALIGNMENT_RUN": paths["alignment_run"], "CALLS": str(tmp_path / "calls.txt"), "PATH": os.environ["PATH"],
            "launcher": paths["launcher"]}


def calls(env: dict[str, str]) -> list[str]:
    return Path(env["CALLS"]).read_text().splitlines()


def test_run_sh_runs_each_stage_of_each_round_with_the_same_overrides(fake: dict[str, str]) -> None:
    env = {k: v for k, v in fake.items() if k != "launcher"}
    result = run_script("--recipe", "bipost", "--rounds", "2", "--run-dir", "/runs/x", "world=ci", "seed=3", **env)
    assert result.returncode == 0, output_tail(result)
    common = "recipe=bipost world=ci seed=3 run_dir=/runs/x rounds=2"
    assert calls(fake) == [f"alignment_run stage=iterate stage.list_stages=true {common}"] + [
        f"alignment_run stage={stage} round={k} {common}" for k in (0, 1) for stage in ("generate", "rank")] + [
        f"alignment_run stage=iterate {common}"]


def test_run_sh_takes_rounds_from_the_plan_and_stages_from_the_launcher(fake: dict[str, str]) -> None:
    env = {k: v for k, v in fake.items() if k != "launcher"}
    result = run_script(RECIPE="toy", PLAN_ROUNDS="3", LAUNCHER=f"{fake['launcher']} --nproc_per_node 2", **env)
    assert result.returncode == 0, output_tail(result)
    assert "3 round(s) of generate rank in /runs/planned" in result.stdout
    recorded = calls(fake)
    assert recorded[0] == "alignment_run stage=iterate stage.list_stages=true recipe=toy"
    assert recorded[1:-1] == [f"launcher --nproc_per_node 2 stage={stage} round={k} recipe=toy"
                              for k in range(3) for stage in ("generate", "rank")]
    assert recorded[-1] == "alignment_run stage=iterate recipe=toy"


def test_run_sh_stops_on_a_bad_argument_or_an_invalid_plan(fake: dict[str, str]) -> None:
    env = {k: v for k, v in fake.items() if k != "launcher"}
    result = run_script("--bogus", **env)
    assert result.returncode == 2 and "unexpected argument '--bogus'" in result.stderr
    result = run_script("--recipe", "toy", FAIL_PLAN="1", **env)
    assert result.returncode == 2 and "error: invalid configuration" in result.stderr
    assert calls(fake) == ["alignment_run stage=iterate stage.list_stages=true recipe=toy"]  # nothing else ran


def test_run_sh_rejects_a_plan_with_a_missing_reward_model_before_any_stage_runs(tmp_path: Path) -> None:
    """The smol recipe needs its ranker and judge: the plan step names both keys, as a user sets them, for every
    round, before round 0's first stage spends minutes generating prompts."""
    run_dir = tmp_path / "smol"
    result = run_script("--recipe", "smol", "--rounds", "2", "--run-dir", str(run_dir))
    assert result.returncode == 2, output_tail(result)
    assert "round 0, 1: recipe.stage_settings.rank.ranker_model must name a checkpoint" in result.stderr
    assert "round 0, 1: recipe.stage_settings.evaluate.ranker_model must name a checkpoint" in result.stderr
    assert "[run.sh] round 0" not in result.stdout and not run_dir.exists()
