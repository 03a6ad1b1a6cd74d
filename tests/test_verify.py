"""``alignment_run stage=verify`` on a small real run (the world=ci ``prepare`` and a 2-step ``joint_train``): a
byte flipped in any file of any artifact is found, and the stages refuse a damaged artifact with the file named
instead of calling it a config change or skipping it as complete."""

from __future__ import annotations

import shutil
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from pipeline.artifacts import DamagedArtifactError
from pipeline.layout import RunLayout, stage_dir
from pipeline.verify import RunReport, check_artifact, render_report, run_artifacts, verify_artifacts
from stages.compose import compose_run
from stages.runner import run_stage
from tests.conftest import SMALL_WORLD
from tests.test_cli import cli_env
from tests.watchdog import run_watched

TRAIN = ("stage=joint_train", *SMALL_WORLD, "stage.train.max_steps=2", "stage.train.eval_every=2",
         "stage.train.sft_batch_size=4", "stage.train.pref_batch_size=4", "stage.train.eval_max_rows=8",
         "stage.verifier_eval=false", "stage.progress=false")
MODEL_FILES = ("model/chat_template.jinja", "model/config.json", "model/generation_config.json",
               "model/model.safetensors", "model/tokenizer.json", "model/tokenizer_config.json")
COMMON = ("_SUCCESS", "config.yaml", "logs/metrics.jsonl", "manifest.json", *MODEL_FILES)
SPLITS = ("candidates", "eval_tasks", "golden", "pref_eval", "pref_train", "prompts", "sft_eval", "sft_train")
# every file of the run's two artifacts (checked by the first test, so the list cannot drift)
FILES = {"prepare": (*COMMON, *(f"world/{split}.jsonl" for split in SPLITS)),
         "joint_train": (*COMMON, "loss_space.png")}
CASES = [(stage, name) for stage, names in FILES.items() for name in names]


@pytest.fixture(scope="module")
def small_run(prepared_world: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    run_dir = tmp_path_factory.mktemp("verify") / "run"
    shutil.copytree(prepared_world / "round_00" / "prepare", stage_dir(run_dir, 0, "prepare"))
    run_stage(compose_run(*TRAIN, f"run_dir={run_dir}"))
    return run_dir


@pytest.fixture
def flipped(small_run: Path, request: pytest.FixtureRequest) -> Iterator[Path]:
    """Flip one byte in the middle of ``small_run``'s ``(stage, file)`` (request.param) and restore it after."""
    stage, name = request.param
    path = stage_dir(small_run, 0, stage) / name
    original = path.read_bytes()
    data = bytearray(original)
    data[len(data) // 2] ^= 0x80
    path.write_bytes(bytes(data))
    try:
        yield path
    finally:
        path.write_bytes(original)


def report_of(run_dir: Path) -> RunReport:
    complete, incomplete = run_artifacts(RunLayout.of(run_dir))
    return RunReport(verify_artifacts(complete), incomplete)


def test_the_cases_cover_every_file_of_the_run(small_run: Path) -> None:
    for stage, names in FILES.items():
        final = stage_dir(small_run, 0, stage)
        assert sorted(str(p.relative_to(final)) for p in final.rglob("*") if p.is_file()) == sorted(names)
    report = report_of(small_run)
    assert report.intact and [c.artifact.name for c in report.checks] == ["prepare", "joint_train"]
    assert "all 2 artifact(s) intact" in render_report(report, small_run)


@pytest.mark.parametrize("flipped", CASES, indirect=True, ids=[f"{s}/{n}" for s, n in CASES])
def test_verify_finds_a_flipped_byte_in_any_file(small_run: Path, flipped: Path) -> None:
    report = report_of(small_run)
    damaged = {c.artifact.name: c for c in report.checks if not c.intact}
    stage = flipped.relative_to(small_run).parts[1]
    assert list(damaged) == [stage]
    name = str(flipped.relative_to(stage_dir(small_run, 0, stage)))
    assert list(damaged[stage].corrupted) == [name]  # the manifest is vouched for by _SUCCESS, and the reverse
    assert damaged[stage].missing == [] and damaged[stage].extra == []
    table = render_report(report, small_run)
    assert f"round_00/{stage}" in table and f"corrupted {name}" in table and "force=true" in table
    # the cheap check before a stage trusts or skips an artifact sees it too (the flip changed the mtime)
    assert not check_artifact(stage_dir(small_run, 0, stage), deep=False).intact


@pytest.mark.parametrize("flipped", [("prepare", "model/model.safetensors")], indirect=True)
def test_the_next_stage_names_the_damaged_input_instead_of_a_config_change(small_run: Path, flipped: Path) -> None:
    with pytest.raises(DamagedArtifactError) as raised:
        run_stage(compose_run(*TRAIN, f"run_dir={small_run}"))
    message = str(raised.value)
    assert f"{stage_dir(small_run, 0, 'prepare')} (inputs " in message
    assert "corrupted model/model.safetensors" in message and "stage=prepare round=0" in message
    assert "different config" not in message and "content changed" not in message


@pytest.mark.parametrize("flipped", [("joint_train", "model/model.safetensors")], indirect=True)
def test_a_damaged_stage_is_not_skipped_as_complete(small_run: Path, flipped: Path) -> None:
    with pytest.raises(DamagedArtifactError, match="corrupted model/model.safetensors"):
        run_stage(compose_run(*TRAIN, f"run_dir={small_run}"))


def alignment_run(*overrides: str) -> tuple[int, str]:
    result = run_watched([sys.executable, "-m", "stages.cli", *overrides], env=cli_env())
    return result.returncode, result.stdout + result.stderr


@pytest.mark.parametrize("flipped", [("joint_train", "model/model.safetensors")], indirect=True)
def test_the_command_exits_1_and_prints_the_table(small_run: Path, flipped: Path, tmp_path: Path) -> None:
    code, output = alignment_run("stage=verify", f"run_dir={small_run}", "stage.progress=false")
    assert code == 1, output
    row = next(line for line in output.splitlines() if line.startswith("round_00/joint_train"))
    assert "DAMAGED" in row and "corrupted model/model.safetensors" in row
    assert "round_00/prepare" in output and "1 of 2 artifact(s) damaged" in output
    assert f"stage=joint_train round=0 run_dir={small_run}" in output
    code, output = alignment_run("stage=verify", f"run_dir={tmp_path / 'absent'}")
    assert code == 2 and "nothing to verify" in output


def test_the_command_exits_0_when_every_artifact_is_intact(small_run: Path) -> None:
    code, output = alignment_run("stage=verify", f"run_dir={small_run}", "stage.progress=false")
    assert code == 0, output
    assert "all 2 artifact(s) intact" in output
