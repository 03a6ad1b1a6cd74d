"""DeepSpeed ZeRO-2 on CPU through accelerate trains like the plain loop (slow: DeepSpeed JIT-builds ops)."""

from __future__ import annotations

import pytest

from tests.test_joint_train import evals, train


@pytest.mark.slow
def test_zero2_run_matches_the_plain_run(world_run_dir):
    plain, zero2 = world_run_dir("plain"), world_run_dir("zero2")
    steps = ("stage.train.max_steps=3", "stage.train.eval_every=3", "objective=alright")
    train(plain, *steps)
    manifest = train(zero2, *steps, "stage.strategy=deepspeed", "stage.zero_stage=2")
    assert manifest["metrics"]["steps"] == 3
    for left, right in zip(evals(plain), evals(zero2), strict=True):
        assert left["eval/sft_loss"] == pytest.approx(right["eval/sft_loss"], abs=1e-3)
        assert left["eval/pref_loss"] == pytest.approx(right["eval/pref_loss"], abs=1e-3)
