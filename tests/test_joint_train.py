"""joint_train on the embedded world: λ limits, exact resume, learning, LoRA, early stop, NaN handling."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from alignment.train.loop import JointTrainer, NonFiniteLossError
from alignment.train.metrics_log import read_metrics
from pipeline.artifacts import partial_dir, read_manifest
from pipeline.layout import stage_dir
from stages.compose import compose_run
from stages.runner import run_stage
from tests.conftest import SMALL_WORLD

FAST = ("stage.train.sft_batch_size=4", "stage.train.pref_batch_size=4", "stage.train.eval_max_rows=16",
        "stage.verifier_eval=false", "stage.progress=false", "stage.log_every=1")


def train(run_dir: Path, *overrides: str) -> dict:
    run = compose_run("stage=joint_train", *SMALL_WORLD, *FAST, f"run_dir={run_dir}", *overrides)
    return run_stage(run)


def trained_weights(run_dir: Path) -> dict[str, torch.Tensor]:
    model_dir = stage_dir(run_dir, 0, "joint_train") / "model"
    name = "adapter_model.safetensors" if (model_dir / "adapter_model.safetensors").exists() else "model.safetensors"
    return load_file(str(model_dir / name))


def evals(run_dir: Path) -> list[dict]:
    records = read_metrics(stage_dir(run_dir, 0, "joint_train") / "logs" / "metrics.jsonl")
    return [{k: v for k, v in r.items() if k.startswith("eval/") or k == "step"} for r in records if "eval/sft_loss" in r]


def assert_same_training(a: Path, b: Path, tol: float = 0.0) -> None:
    """Same eval history and weights: exactly, or within ``tol``. Within a tolerance, accuracies are left out: a
    pair's margin is 0 up to rounding while the policy equals its reference (step 0), so a change far below
    ``tol`` in the computation (other batch shapes, another CPU's kernels) flips it between right and wrong; the
    margins and losses, which are continuous, are compared instead."""
    for left, right in zip(evals(a), evals(b), strict=True):
        assert left.keys() == right.keys()
        for key in left:
            if tol > 0 and key.endswith("accuracy"):
                continue
            assert left[key] == pytest.approx(right[key], abs=tol, rel=0), key
    weights_a, weights_b = trained_weights(a), trained_weights(b)
    assert weights_a.keys() == weights_b.keys()
    for name in weights_a:
        torch.testing.assert_close(weights_a[name], weights_b[name], atol=tol, rtol=0)


STEPS = ("stage.train.max_steps=6", "stage.train.eval_every=3", "stage.train.save_every=3")


@pytest.mark.parametrize(("objective", "lambd", "pure"), [("alright", 0.0, "sft"), ("alright", 1.0, "preference"),
                                                          ("mix", 0.0, "sft")])
def test_lambda_limits_equal_single_objective_training(world_run_dir, objective, lambd, pure):
    joint, single = world_run_dir("joint"), world_run_dir("single")
    train(joint, f"objective={objective}", f"objective.lambd={lambd}", *STEPS)
    train(single, f"objective={pure}", *STEPS)
    assert_same_training(joint, single)
    metrics = read_manifest(stage_dir(joint, 0, "joint_train"))["metrics"]
    assert metrics["steps_per_objective"][pure] == 6


@pytest.mark.parametrize("objective", ["alright", "maxright"])
def test_resume_after_a_crash_equals_an_uninterrupted_run(world_run_dir, monkeypatch, objective):
    steps = ("stage.train.max_steps=8", "stage.train.eval_every=2", "stage.train.save_every=4",
             f"objective={objective}", "objective.refresh_every=3")
    straight, crashed = world_run_dir("straight"), world_run_dir("crashed")
    train(straight, *steps)
    original = JointTrainer._train_step

    def crash_at_step_six(self, step):
        if step == 5:
            raise KeyboardInterrupt("simulated kill after the step-4 checkpoint")
        return original(self, step)

    monkeypatch.setattr(JointTrainer, "_train_step", crash_at_step_six)
    with pytest.raises(KeyboardInterrupt):
        train(crashed, *steps)
    checkpoints = partial_dir(stage_dir(crashed, 0, "joint_train")) / "checkpoints"
    assert [p.name for p in checkpoints.iterdir()] == ["step-000004"]
    monkeypatch.setattr(JointTrainer, "_train_step", original)
    train(crashed, *steps)  # the same command again resumes from step 4
    assert_same_training(straight, crashed, tol=1e-5)


def test_joint_training_keeps_both_objectives_where_single_objectives_forget(world_run_dir):
    """Learning happens, and ALRIGHT sits between the single-objective runs on both held-out losses."""
    budget = ("stage.train.max_steps=30", "stage.train.eval_every=30", "stage.train.sft_batch_size=8",
              "stage.train.pref_batch_size=8", "stage.train.eval_max_rows=256")
    finals = {}
    for objective in ("sft", "preference", "alright"):
        run_dir = world_run_dir(objective)
        train(run_dir, f"objective={objective}", *budget)
        finals[objective] = evals(run_dir)[-1]
    start = evals(run_dir)[0]
    assert finals["sft"]["eval/sft_loss"] < start["eval/sft_loss"]  # SFT learns
    assert finals["preference"]["eval/pref_loss"] < start["eval/pref_loss"]  # DPO learns
    assert finals["preference"]["eval/reward_accuracy"] > 0.6
    # joint training keeps what each single objective neglects
    assert finals["alright"]["eval/sft_loss"] < finals["preference"]["eval/sft_loss"]
    assert finals["alright"]["eval/pref_loss"] < finals["sft"]["eval/pref_loss"]


def test_lora_training_saves_an_adapter_with_the_adapter_disabled_reference(world_run_dir):
    from alignment.models.loading import is_adapter_dir, load_causal_lm

    run_dir = world_run_dir()
    manifest = train(run_dir, "model.lora.enabled=true", "model.lora.r=4", "stage.train.max_steps=2",
                     "stage.save_merged=true")
    model_dir = stage_dir(run_dir, 0, "joint_train") / "model"
    assert is_adapter_dir(model_dir) and (model_dir / "merged" / "model.safetensors").is_file()
    assert "adapters disabled" in manifest["metrics"]["reference"]
    merged = load_causal_lm(str(model_dir / "merged"))
    from_adapter = load_causal_lm(str(model_dir))
    ids = torch.tensor([[0, 4, 5, 6]])
    torch.testing.assert_close(merged(ids).logits, from_adapter(ids).logits)


def test_early_stop_when_an_objective_reaches_its_optimum(world_run_dir):
    run_dir = world_run_dir()
    manifest = train(run_dir, "objective.sft_opt=100.0", "stage.early_stop_eps=0.0", "stage.train.max_steps=6",
                     "stage.train.eval_every=2")
    assert manifest["metrics"]["steps"] == 2
    assert "optimum" in manifest["metrics"]["stop_reason"]


@pytest.mark.parametrize("objective", ["alright", "maxright", "mix", "preference"])
def test_objectives_listed_in_either_order_train_the_same(world_run_dir, objective):
    """λ weighs the preference objective and MAXRIGHT compares each loss with its own optimum whatever the order
    of objective.objectives: the swapped order trains exactly the same model."""
    listed, swapped = world_run_dir("listed"), world_run_dir("swapped")
    settings = (f"objective={objective}", "objective.lambd=0.25", "objective.sft_opt=0.5", "objective.dpo_opt=0.2",
                *STEPS)
    first = train(listed, *settings, "objective.objectives=[sft,preference]")
    second = train(swapped, *settings, "objective.objectives=[preference,sft]")
    assert first["metrics"]["steps_per_objective"] == second["metrics"]["steps_per_objective"]
    assert_same_training(listed, swapped)


def test_maxright_reads_optima_from_single_objective_manifests(world_run_dir):
    sft_run, pref_run, joint = world_run_dir("sft"), world_run_dir("pref"), world_run_dir("joint")
    train(sft_run, "objective=sft", "stage.train.max_steps=2")
    train(pref_run, "objective=preference", "stage.train.max_steps=2")
    sft_dir, pref_dir = stage_dir(sft_run, 0, "joint_train"), stage_dir(pref_run, 0, "joint_train")
    manifest = train(joint, "objective=maxright", "stage.train.max_steps=2",
                     f"objective.optima_from=[{sft_dir},{pref_dir}]")
    assert manifest["inputs"]["optima.0"]["path"] == str(sft_dir)
    expected = {"sft": read_manifest(sft_dir)["metrics"]["eval/sft_loss_best"],
                "preference": read_manifest(pref_dir)["metrics"]["eval/pref_loss_best"]}
    from stages.builders.training import optima

    run = compose_run("stage=joint_train", f"objective.optima_from=[{sft_dir},{pref_dir}]")
    assert optima(run) == expected


def test_non_finite_loss_stops_with_a_clear_message(world_run_dir, monkeypatch):
    from alignment.train.components import SFTComponent

    original = SFTComponent.loss
    calls = {"n": 0}

    def poisoned(self, model, batch):
        loss, values = original(self, model, batch)
        calls["n"] += 1
        return (loss * float("nan") if calls["n"] > 3 else loss), values

    monkeypatch.setattr(SFTComponent, "loss", poisoned)
    run_dir = world_run_dir()
    with pytest.raises(NonFiniteLossError, match="non-finite sft loss.*last good checkpoint"):
        train(run_dir, "objective=sft", "stage.train.max_steps=6", "stage.train.save_every=2")
    assert (partial_dir(stage_dir(run_dir, 0, "joint_train")) / "checkpoints" / "step-000002").is_dir()


def test_knowledge_distillation_objective_runs(world_run_dir):
    run_dir = world_run_dir()
    teacher = run_dir / "round_00" / "prepare" / "model"
    manifest = train(run_dir, "objective=mix", "objective.objectives=[kd,preference]", f"objective.teacher={teacher}",
                     "stage.train.max_steps=2")
    assert manifest["metrics"]["steps_per_objective"] == {"kd": 2, "preference": 2}


def test_dry_run_prints_statistics_and_a_marked_example(world_run_dir, capsys):
    run_dir = world_run_dir()
    run = compose_run("stage=joint_train", *SMALL_WORLD, f"run_dir={run_dir}", "dry_run=true")
    report = run_stage(run)
    out = capsys.readouterr().out
    assert "[[" in out and "no training done" in out
    assert report["data"]["sft"]["kept"] > 0
    assert not stage_dir(run_dir, 0, "joint_train").exists()
    assert json.dumps(report)


def test_every_preference_loss_trains_a_step(world_run_dir):
    """Each loss runs end to end through the trainer (reference-free ones without a reference model)."""
    from alignment.losses import LossType

    world = world_run_dir()
    for loss in LossType:
        run = compose_run("stage=joint_train", *SMALL_WORLD, *FAST, f"run_dir={world / loss.value}",
                          f"world_dir={world}", "objective=preference", f"loss={loss.value}",
                          "stage.train.max_steps=1", "stage.train.eval_every=1")
        manifest = run_stage(run)
        assert manifest["metrics"]["eval/pref_loss"] == manifest["metrics"]["eval/pref_loss"], loss  # not NaN
        if not loss.needs_reference:
            assert manifest["metrics"]["reference"].startswith("none")
