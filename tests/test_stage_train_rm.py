"""``stage=train_rm`` on the embedded world (world=ci): learning, the saved model, ranking with it, exact resume,
margins and centering, data halves, config errors; one smoke test on the real SmolLM2 model and HH-RLHF rows."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file

from alignment.train.loop import JointTrainer
from alignment.train.metrics_log import read_metrics
from pipeline.artifacts import partial_dir, read_manifest
from pipeline.layout import stage_dir
from stages.compose import compose_run
from stages.runner import run_stage
from stages.train_rm import data_half, pair_margins
from tests.real_model import smollm2_dir  # noqa: F401  (fixture)

FAST = ("world=ci", "stage.progress=false", "stage.log_every=1")
LEARN = ("stage.train.max_steps=100", "stage.train.eval_every=50", "stage.train.save_every=50")
HH = Path("/work/shared/data/hh_rlhf")


def train_rm(run_dir: Path, *overrides: str) -> dict[str, Any]:
    return run_stage(compose_run("stage=train_rm", *FAST, f"run_dir={run_dir}", *overrides))


def artifact(run_dir: Path) -> Path:
    return stage_dir(run_dir, 0, "train_rm")


def evals(run_dir: Path) -> list[dict[str, Any]]:
    return [r for r in read_metrics(artifact(run_dir) / "logs" / "metrics.jsonl") if "eval/accuracy" in r]


@pytest.fixture(scope="module")
def trained(prepared_world: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A run directory with the world and a full fine-tuning train_rm artifact (100 steps)."""
    run_dir = tmp_path_factory.mktemp("train_rm") / "run"
    shutil.copytree(prepared_world / "round_00" / "prepare", run_dir / "round_00" / "prepare")
    train_rm(run_dir, *LEARN)
    return run_dir


def test_a_reward_model_learns_to_separate_held_out_pairs(trained: Path) -> None:
    metrics = read_manifest(artifact(trained))["metrics"]
    before, after = metrics["heldout_accuracy_before"], metrics["heldout_accuracy"]
    assert after["n"] == 48 and after["ci_low"] > 0.5  # the whole 95% interval above chance
    assert after["value"] > before["value"]
    points = evals(trained)
    assert [p["step"] for p in points] == [0, 50, 100]
    assert points[0]["eval/loss"] == pytest.approx(math.log(2), abs=0.02)  # a fresh head: rewards nearly equal
    assert points[-1]["eval/loss"] < points[0]["eval/loss"] - 0.1
    assert metrics["heldout_margin"] == points[-1]["eval/margin"] > 0
    assert metrics["reward_std"] > 0 and metrics["steps"] == 100 and metrics["seconds_per_step"] > 0
    assert metrics["data"]["preference"]["kept"] == 300 and metrics["data"]["preference_eval"]["kept"] == 48
    steps = [r for r in read_metrics(artifact(trained) / "logs" / "metrics.jsonl") if "train/rm_loss" in r]
    assert [r["step"] for r in steps] == list(range(1, 101))  # a loss per optimizer step (log_every=1)


def heldout_batches(model_dir: Path, rows: int = 48, size: int = 8) -> tuple[Any, list[dict[str, Any]]]:
    """The world's held-out pairs tokenized and collated exactly as train_rm does, and the tokenizer."""
    from alignment.data.readers import read_rows
    from alignment.data.tokenize import tokenize_dataset
    from alignment.models.loading import load_tokenizer
    from stages.train_rm import pair_collate

    tokenizer = load_tokenizer(str(model_dir))
    source = model_dir.parent.parent / "prepare" / "world" / "pref_eval.jsonl"
    pairs, _ = tokenize_dataset(tokenizer, read_rows(source, kind="preference").rows[:rows], max_length=512)
    collate = pair_collate(tokenizer, None)
    return tokenizer, [collate(pairs[i:i + size]) for i in range(0, len(pairs), size)]


def test_the_saved_model_loads_as_a_sequence_classifier_and_reproduces_the_training_numbers(trained: Path) -> None:
    from transformers import AutoModelForSequenceClassification

    from alignment.ranking.base import CandidateGroup
    from alignment.ranking.reward_model import RewardModelRanker
    from alignment.train.reward import evaluate_reward_model, pair_rewards

    model_dir = artifact(trained) / "model"
    model = AutoModelForSequenceClassification.from_pretrained(model_dir, dtype=torch.float32)
    assert model.config.num_labels == 1 and model.config.pad_token_id is not None
    tokenizer, batches = heldout_batches(model_dir)
    again = evaluate_reward_model(model, batches, seed=0)
    final = evals(trained)[-1]
    for key in ("accuracy", "margin", "loss", "reward_mean"):
        assert again[key] == pytest.approx(final[f"eval/{key}"], abs=1e-5), key
    # the ranker's default encoding gives the ids training gave: the same reward for the same response
    from alignment.data.readers import read_rows
    from alignment.data.rows import PreferenceRow

    row = read_rows(trained / "round_00" / "prepare" / "world" / "pref_eval.jsonl", kind="preference").rows[0]
    assert isinstance(row, PreferenceRow)
    ranker = RewardModelRanker(str(model_dir), batch_size=4, device="cpu")
    scored = ranker.score_groups([CandidateGroup("k", "", row.messages, (row.chosen, row.rejected))])[0].scores
    with torch.no_grad():
        chosen, rejected = pair_rewards(model.eval(), batches[0])
    assert scored == pytest.approx([float(chosen[0]), float(rejected[0])], abs=1e-5)


def test_rank_accepts_the_artifact_its_model_dir_and_a_round_reference(trained: Path, tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    shutil.copytree(trained, run_dir)
    run_stage(compose_run("stage=generate", *FAST, f"run_dir={run_dir}", "stage.backend=hf", "stage.n=3",
                          "stage.max_new_tokens=6", "stage.max_prompts=6"))
    found = []
    for spelling in (str(artifact(run_dir)), str(artifact(run_dir) / "model"), "round:train_rm"):
        manifest = run_stage(compose_run("stage=rank", *FAST, f"run_dir={run_dir}", "stage.ranker=reward_model",
                                         f"stage.ranker_model={spelling}", "force=true"))
        ranked = [json.loads(line) for line in (stage_dir(run_dir, 0, "rank") / "ranked.jsonl").open()]
        found.append((manifest["inputs"]["ranker_model"], [row["scores"] for row in ranked]))
        assert manifest["metrics"]["ranker_counts"]["scored"] == 18
    first_input, first_scores = found[0]
    assert first_input["path"] == str(artifact(run_dir)) and first_input["loaded"] == str(artifact(run_dir) / "model")
    assert first_input["fingerprint"] == read_manifest(artifact(run_dir))["fingerprint"]
    for ranker_input, scores in found[1:]:  # one model, one identity, the same scores however it is named
        assert ranker_input["fingerprint"] == first_input["fingerprint"] and scores == first_scores


@pytest.mark.parametrize("recipe", ["rlhflow", "aipo"])
def test_recipes_rank_with_a_train_rm_artifact(trained: Path, tmp_path: Path, recipe: str) -> None:
    from stages import rank
    from stages.iterate import planned_runs

    settings = "++recipe.stage_settings.rank"
    run = compose_run("stage=iterate", f"recipe={recipe}", "world=ci", "rounds=2", f"run_dir={tmp_path}",
                      f"{settings}.ranker=reward_model", f"{settings}.ranker_model={artifact(trained)}")
    assert run.validate() == []
    plans = [plan for plan in planned_runs(run) if plan.stage.name == "rank"]
    assert [plan.round for plan in plans] == [0, 1]
    for plan in plans:  # every round ranks with the trained model, identified by its artifact
        ranker = rank.inputs(plan)["ranker_model"]
        assert (ranker.path, ranker.source) == (str(artifact(trained) / "model"), str(artifact(trained)))


def trained_weights(run_dir: Path) -> dict[str, torch.Tensor]:
    return load_file(str(artifact(run_dir) / "model" / "model.safetensors"))


def test_a_killed_lora_run_resumes_to_the_uninterrupted_result(world_run_dir: Any,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    steps = ("stage.train.max_steps=6", "stage.train.eval_every=2", "stage.train.save_every=3",
             "model.lora.enabled=true", "model.lora.r=4")
    straight, crashed = world_run_dir("straight"), world_run_dir("crashed")
    train_rm(straight, *steps)
    original = JointTrainer._train_step

    def crash_at_step_five(self: JointTrainer, step: int) -> Any:
        if step == 4:
            raise KeyboardInterrupt("simulated kill after the step-3 checkpoint")
        return original(self, step)

    monkeypatch.setattr(JointTrainer, "_train_step", crash_at_step_five)
    with pytest.raises(KeyboardInterrupt):
        train_rm(crashed, *steps)
    assert [p.name for p in (partial_dir(artifact(crashed)) / "checkpoints").iterdir()] == ["step-000003"]
    monkeypatch.setattr(JointTrainer, "_train_step", original)
    manifest = train_rm(crashed, *steps)  # the same command again resumes from step 3
    assert manifest["metrics"]["lora"] is True
    for left, right in zip(evals(straight), evals(crashed), strict=True):
        assert left.keys() == right.keys()
        for key in (k for k in left if k.startswith("eval/") or k == "step"):
            assert left[key] == pytest.approx(right[key], abs=1e-5, rel=0), key
    weights, resumed = trained_weights(straight), trained_weights(crashed)
    assert weights.keys() == resumed.keys() and not any("lora" in name for name in weights)  # merged
    for name in weights:
        torch.testing.assert_close(weights[name], resumed[name], atol=1e-5, rtol=0)


def test_a_margin_column_shifts_the_loss_and_centering_is_logged(world_run_dir: Any, tmp_path: Path) -> None:
    run_dir = world_run_dir()
    source = run_dir / "round_00" / "prepare" / "world" / "pref_train.jsonl"
    with_margin = tmp_path / "pairs_with_margin.jsonl"
    with_margin.write_text("".join(json.dumps({**json.loads(line), "margin": 5.0}) + "\n" for line in source.open()))
    one_step = ("stage.train.max_steps=1", "stage.train.eval_every=1", f"data.preference.path={with_margin}",
                "stage.data_half=first")
    plain = train_rm(run_dir, *one_step, "stage.center_rewards_coefficient=0.5")
    shifted = train_rm(run_dir, *one_step, "stage.margin=true", "force=true")
    assert plain["metrics"]["margin"] == "none (stage.margin=false)"
    assert shifted["metrics"]["margin"] == "per-pair column"
    assert shifted["metrics"]["data"]["preference"]["kept"] == 150  # the first half of 300 rows
    first = [r for r in read_metrics(artifact(run_dir) / "logs" / "metrics.jsonl") if "train/rm_loss" in r][0]
    # the same initial model and first batch: −log σ(d − 5) ≈ 5 − d, against ≈ log 2 for d ≈ 0
    assert first["train/rm_loss"] == pytest.approx(5.0 + math.log1p(math.exp(-5.0)), abs=0.1)
    stale = artifact(run_dir).parent
    centering = [r for p in stale.glob("train_rm.stale-*") for r in read_metrics(p / "logs" / "metrics.jsonl")
                 if "train/rm_centering" in r]
    assert centering and centering[0]["train/rm_centering"] > 0.0


def test_a_trained_model_is_named_by_reference_artifact_or_model_dir_with_one_identity(tmp_path: Path) -> None:
    from pipeline.layout import RunLayout
    from pipeline.rounds import resolve_model_ref

    run = RunLayout.of(tmp_path)
    done = stage_dir(tmp_path, 1, "train_rm")
    (done / "model").mkdir(parents=True)
    (done / "manifest.json").write_text("{}")
    (done / "_SUCCESS").write_text("")
    model = str(done / "model")
    for text in ("round:train_rm", "prev:train_rm", str(done), model):
        found = resolve_model_ref(text, run, 2 if text.startswith("prev:") else 1)
        assert (found.path, found.source) == (model, str(done)), text
    (done / "_SUCCESS").unlink()  # an incomplete artifact: loaded as named, identified by its content
    assert resolve_model_ref(model, run, 1).source == model
    assert resolve_model_ref(str(done), run, 1).path == str(done)


def test_data_halves_are_disjoint_and_cover_the_rows() -> None:
    rows = list(range(7))
    assert data_half(rows, "first") == [0, 1, 2, 3] and data_half(rows, "second") == [4, 5, 6]
    assert data_half(rows, "all") == rows


def test_a_margin_column_on_only_some_rows_names_the_row() -> None:
    from alignment.data.rows import PreferenceRow

    rows = [PreferenceRow(id=f"r{i}", messages=({"role": "user", "content": "q"},), chosen="a", rejected="b",
                          meta={"margin": 1.0} if i != 2 else {}) for i in range(3)]
    with pytest.raises(ValueError, match=r"pairs.jsonl row 3 \(id r2\): has no field 'margin'"):
        pair_margins(rows, "pairs.jsonl")
    assert pair_margins(rows[:2], "pairs.jsonl") == {"r0": 1.0, "r1": 1.0}
    assert pair_margins([PreferenceRow("x", rows[0].messages, "a", "b")], "f") is None


def test_config_errors_are_reported_together() -> None:
    problems = "\n".join(compose_run("stage=train_rm", "stage.data_half=third", "stage.center_rewards_coefficient=-1",
                                     "stage.train.prefix_sharing=true", "stage.train.ref_cache=true",
                                     "stage.strategy=fsdp", "data.preference.path=").validate())
    for expected in ("stage.data_half", "stage.center_rewards_coefficient", "stage.train.prefix_sharing",
                     "stage.train.ref_cache", "stage.strategy", "data.preference.path"):
        assert expected in problems, expected
    assert compose_run("stage=train_rm", "world=ci").validate() == []


def test_a_dry_run_prints_the_data_and_one_encoded_pair(world_run_dir: Any, capsys: pytest.CaptureFixture[str]) -> None:
    report = train_rm(world_run_dir(), "dry_run=true", "stage.data_half=second")
    assert report["data"]["preference"]["kept"] == 150
    out = capsys.readouterr().out
    assert "one encoded pair" in out and "--- chosen ---" in out and "--- rejected ---" in out


@pytest.mark.skipif(not HH.is_dir(), reason="needs /work/shared/data")
def test_smollm2_lora_reward_model_on_hh_rlhf_rows(smollm2_dir: Path, tmp_path: Path) -> None:  # noqa: F811
    """A few LoRA steps of the real 135M model on real pairs: trains, saves, reloads as a classifier."""
    from transformers import AutoModelForSequenceClassification

    manifest = run_stage(compose_run(
        "stage=train_rm", "model=smollm2", "data=hh_alpaca", f"run_dir={tmp_path}", "stage.progress=false",
        "model.lora.enabled=true", "data.max_length=256", "data.preference.max_rows=8",
        "data.preference_eval.max_rows=4", "stage.train.max_steps=2", "stage.train.pref_batch_size=2",
        "stage.train.eval_every=2", "stage.train.save_every=2", "stage.train.lr=1e-4"))
    metrics = manifest["metrics"]
    assert metrics["steps"] == 2 and metrics["heldout_accuracy"]["n"] == 4 and metrics["lora"] is True
    assert manifest["inputs"]["base_model"]["path"] == str(smollm2_dir)
    model = AutoModelForSequenceClassification.from_pretrained(artifact(tmp_path) / "model", dtype=torch.float32)
    assert model.config.num_labels == 1 and type(model).__name__ == "LlamaForSequenceClassification"
