"""stage=filter end to end on the embedded world: outputs, keep rule, row format joint_train can read."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from alignment.data.readers import read_jsonl, read_rows
from pipeline.artifacts import read_manifest
from pipeline.layout import stage_dir
from stages.compose import compose_run
from stages.config.errors import ConfigError
from stages.runner import run_stage
from tests.conftest import SMALL_WORLD

FAST = ("stage.max_steps=3", "stage.batch_size=8", "stage.golden_batch_size=4", "stage.progress=false",
        "stage.log_every=1")


def test_filter_writes_selection_filtered_rows_and_quality_metrics(world_run_dir) -> None:
    run_dir = world_run_dir()
    manifest = run_stage(compose_run("stage=filter", *SMALL_WORLD, *FAST, f"run_dir={run_dir}",
                                     "stage.keep_fraction=0.5"))
    work = stage_dir(run_dir, 0, "filter")
    selection = list(read_jsonl(work / "selection.jsonl"))
    candidates = read_rows(run_dir / "round_00" / "prepare" / "world" / "candidates.jsonl", "sft").rows
    assert [s["id"] for s in selection] == [row.id for row in candidates]
    assert sum(s["kept"] for s in selection) == len(candidates) // 2
    # every kept weight is at least every dropped one (top-p)
    kept = [s["weight"] for s in selection if s["kept"]]
    dropped = [s["weight"] for s in selection if not s["kept"]]
    assert min(kept) >= max(dropped)
    assert sum(s["weight"] for s in selection) == pytest.approx(len(selection), rel=1e-4)  # softmax: sums to N
    filtered = read_rows(stage_dir(run_dir, 0, "filter") / "filtered.jsonl", "sft").rows
    kept_ids = {s["id"] for s in selection if s["kept"]}
    assert [row.id for row in filtered] == [row.id for row in candidates if row.id in kept_ids]
    assert filtered[0] == next(row for row in candidates if row.id == filtered[0].id)  # same row, meta included
    metrics = manifest["metrics"]
    assert metrics["kept"] == len(kept) and metrics["steps"] == 3 and metrics["corrupted"] > 0
    assert 0.0 <= metrics["selection/auroc"] <= 1.0 and metrics["filter_seconds"] > 0
    assert (work / "weights.png").stat().st_size > 0
    logged = [json.loads(line) for line in (work / "logs" / "metrics.jsonl").read_text().splitlines()]
    assert [record["step"] for record in logged] == [1, 2, 3]
    assert read_manifest(work)["metrics"]["kept_fraction"] == pytest.approx(0.5)


def test_default_filter_separates_mismatched_rows_in_one_pass(world_run_dir) -> None:
    # world=ci: 200 candidates, 30% of them answered with another family's answer (world.corruption=mismatch);
    # the default filter (one pass, 13 steps of 16 rows, value-function term on) must rank them low
    run_dir = world_run_dir()
    manifest = run_stage(compose_run("stage=filter", *SMALL_WORLD, f"run_dir={run_dir}", "stage.progress=false"))
    metrics = manifest["metrics"]
    assert metrics["steps"] == metrics["steps_per_epoch"] == 13 and metrics["corrupted"] == 60
    assert metrics["selection/auroc"] >= 0.9
    assert metrics["selection/auroc_mismatch"] == metrics["selection/auroc"]  # the only kind of noise here
    # top 70% of 200 rows kept; with AUROC >= 0.9 most of the 60 corrupted rows are among the 60 dropped
    assert metrics["kept"] == 140 and metrics["selection/precision"] >= 0.9


def test_a_multi_pass_filter_snapshots_the_weights_after_each_pass(world_run_dir) -> None:
    # 200 candidates in batches of 100: 2 steps per pass, 2 passes
    run_dir = world_run_dir()
    manifest = run_stage(compose_run("stage=filter", *SMALL_WORLD, f"run_dir={run_dir}", "stage.progress=false",
                                     "stage.batch_size=100", "stage.golden_batch_size=4", "stage.epochs=2"))
    work = stage_dir(run_dir, 0, "filter")
    assert manifest["metrics"]["steps"] == 4 and manifest["metrics"]["steps_per_epoch"] == 2
    assert {"selection_pass1.jsonl", "selection_pass2.jsonl"} <= set(manifest["outputs"])
    final = {s["id"]: s["weight"] for s in read_jsonl(work / "selection.jsonl")}
    after = [{s["id"]: s["weight"] for s in read_jsonl(work / f"selection_pass{p}.jsonl")} for p in (1, 2)]
    assert after[1] == final  # the last pass's snapshot is the final selection
    assert after[0].keys() == final.keys() and after[0] != final  # the second pass moved the weights
    # one pass: no snapshot (the final selection is the only one)
    one = world_run_dir("one_pass")
    run_stage(compose_run("stage=filter", *SMALL_WORLD, *FAST, f"run_dir={one}"))
    assert not list(stage_dir(one, 0, "filter").glob("selection_pass*"))


def test_threshold_rule_without_value_function(world_run_dir) -> None:
    run_dir = world_run_dir()
    run_stage(compose_run("stage=filter", *SMALL_WORLD, *FAST, f"run_dir={run_dir}", "stage.keep_rule=threshold",
                          "stage.threshold=1.0", "stage.value_function=false", "stage.activation=sigmoid"))
    selection = list(read_jsonl(stage_dir(run_dir, 0, "filter") / "selection.jsonl"))
    assert all(s["kept"] == (s["weight"] >= 1.0) for s in selection)
    assert all(0.0 < s["weight"] < 2.0 for s in selection)


def test_filter_config_problems_are_reported_together() -> None:
    with pytest.raises(ConfigError) as error:
        run_stage(compose_run("stage=filter", "stage.kind=kto", "stage.keep_fraction=0", "stage.rho=2"))
    message = str(error.value)
    assert "stage.kind" in message and "stage.keep_fraction" in message and "stage.rho" in message


def test_unknown_world_corruption_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="world.corruption='typo' is not one of"):
        run_stage(compose_run("stage=prepare", "world.corruption=typo"))


SHARED_DATA = Path(__file__).resolve().parent.parent.parent / "shared" / "data"


@pytest.mark.skipif(not (SHARED_DATA / "alpaca_cleaned").is_dir(), reason="needs ../shared/data")
def test_filter_runs_on_real_alpaca_candidates_against_a_small_golden_subset(world_run_dir) -> None:
    # data=hh_alpaca: Alpaca-cleaned rows as candidates, Alpaca-GPT4 rows as the trusted golden set
    run_dir = world_run_dir()
    manifest = run_stage(compose_run(
        "stage=filter", *SMALL_WORLD, "data=hh_alpaca", f"run_dir={run_dir}", "data.max_length=128",
        "data.candidates.max_rows=32", "data.golden.max_rows=8", *FAST))
    selection = list(read_jsonl(stage_dir(run_dir, 0, "filter") / "selection.jsonl"))
    kept = sum(s["kept"] for s in selection)
    assert len(selection) == 32 and manifest["metrics"]["kept"] == kept == 23  # ceil(0.7 x 32), top_p default
    assert len(set(s["weight"] for s in selection)) > 1  # the selector moved the weights
    assert "selection/auroc" not in manifest["metrics"]  # real rows carry no noise labels
