"""``logs/metrics.jsonl`` belongs to the attempt that completes the stage: a killed attempt's records are dropped
unless a resumed checkpoint vouches for them, and a summary log is this attempt's."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from alignment.train.loop import JointTrainer
from alignment.train.metrics_log import MetricsLog, read_metrics
from pipeline.layout import stage_dir
from stages.runner import _ensure_metrics_log
from tests.test_joint_train import train

DEAD = [{"step": 0, "eval/sft_loss": 9.0}, {"step": 1, "train/lr": 1.0}, {"step": 2, "train/lr": 1.0}]


def write_dead_attempt(path: Path, cut_last_line: bool = False) -> None:
    text = "".join(json.dumps(record) + "\n" for record in DEAD)
    path.write_text(text + ('{"step": 3, "tra' if cut_last_line else ""))


def steps(path: Path) -> list[int]:
    return [int(record["step"]) for record in read_metrics(path)]


def test_a_new_attempt_replaces_a_dead_attempts_records_on_its_first_write(tmp_path: Path) -> None:
    path = tmp_path / "metrics.jsonl"
    write_dead_attempt(path)
    with MetricsLog(path) as log:
        assert steps(path) == [0, 1, 2]  # nothing changes on disk before this attempt writes
        log.write(0, {"eval/sft_loss": 5.0})
        log.write(1, {"train/lr": 0.5})
    assert [(r["step"], r.get("eval/sft_loss", r.get("train/lr"))) for r in read_metrics(path)] == [(0, 5.0), (1, 0.5)]


def test_truncate_after_keeps_the_resumed_records_and_drops_a_line_cut_by_a_kill(tmp_path: Path) -> None:
    path = tmp_path / "metrics.jsonl"
    write_dead_attempt(path, cut_last_line=True)
    with MetricsLog(path) as log:
        log.truncate_after(1)
        log.write(2, {"train/lr": 0.25})
    assert steps(path) == [0, 1, 2] and read_metrics(path)[-1]["train/lr"] == 0.25


def test_restart_empties_the_log(tmp_path: Path) -> None:
    path = tmp_path / "metrics.jsonl"
    write_dead_attempt(path)
    with MetricsLog(path) as log:
        log.restart()
    assert path.read_text() == ""


def test_training_killed_before_its_first_checkpoint_restarts_the_log(world_run_dir, monkeypatch) -> None:
    run_dir = world_run_dir()
    steps_4 = ("stage.train.max_steps=4", "stage.train.eval_every=2", "stage.train.save_every=4")
    original = JointTrainer._train_step

    def killed_at_step_three(self: JointTrainer, step: int) -> dict[str, float]:
        if step == 2:
            raise KeyboardInterrupt("simulated kill before the first checkpoint")
        return original(self, step)

    monkeypatch.setattr(JointTrainer, "_train_step", killed_at_step_three)
    with pytest.raises(KeyboardInterrupt):
        train(run_dir, *steps_4)
    monkeypatch.setattr(JointTrainer, "_train_step", original)
    train(run_dir, *steps_4)
    # one run's records: evals at 0, 2 and 4, a train record per step (log_every=1), not the dead attempt's too
    log = stage_dir(run_dir, 0, "joint_train") / "logs" / "metrics.jsonl"
    assert steps(log) == [0, 1, 2, 2, 3, 4, 4]


def test_a_summary_log_is_this_attempts(tmp_path: Path) -> None:
    logs = tmp_path / "logs"
    logs.mkdir()
    (logs / "metrics.jsonl").write_text(json.dumps({"step": 0, "summary": True, "responses": 3}) + "\n")
    _ensure_metrics_log(tmp_path, {"responses": 5, "note": "text"})
    assert [r["responses"] for r in read_metrics(logs / "metrics.jsonl")] == [5]
    (logs / "metrics.jsonl").write_text(json.dumps({"step": 7, "pretrain/loss": 1.5}) + "\n")
    _ensure_metrics_log(tmp_path, {"responses": 5})
    assert steps(logs / "metrics.jsonl") == [7]  # a stage's own per-step log is kept
