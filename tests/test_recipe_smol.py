"""The real-model recipe ``smol`` for one round at a smoke budget: SmolLM2 self-instructs a few prompts, samples
answers, a reward model ranks them into pairs, ALRIGHT trains on those pairs and the Alpaca-GPT4 anchor (LoRA,
merged), and a second reward model judges the trained model against the round's starting policy.

The two reward models are tiny random checkpoints (real sequence-classification models, meaningless scores), so
the test checks the wiring, not the quality; ``scripts/iterate_demo.py --recipe smol`` runs the real thing.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from alignment.ranking.tiny import build_reward_checkpoint
from pipeline.artifacts import is_complete, read_manifest
from pipeline.layout import stage_dir
from stages.compose import compose_run
from stages.iterate import run_rounds
from tests.real_model import smollm2_dir  # noqa: F401 - the fixture

pytestmark = pytest.mark.skipif(not Path("../shared/data/alpaca_gpt4").is_dir(), reason="needs ../shared/data")
S = "++recipe.stage_settings"


def smoke_budget(ranker: Path, judge: Path) -> tuple[str, ...]:
    return ("rounds=1", "stage.progress=false", "data.max_length=256", "data.sft.max_rows=8",
            "data.sft_eval.max_rows=2", "data.preference_eval.max_rows=2",
            f"{S}.create_instructions.n_instructions=3", f"{S}.create_instructions.requests_per_round=4",
            f"{S}.create_instructions.max_rounds=3", f"{S}.create_instructions.max_new_tokens=40",
            f"{S}.create_instructions.backend=hf", f"{S}.generate.n=2", f"{S}.generate.max_new_tokens=24",
            f"{S}.generate.backend=hf", f"{S}.rank.ranker_model={ranker}", f"{S}.rank.min_margin=0.0",
            f"{S}.joint_train.train.max_steps=2", f"{S}.joint_train.train.eval_every=2",
            f"{S}.joint_train.train.save_every=2", f"{S}.joint_train.train.eval_max_rows=2",
            f"{S}.joint_train.train.sft_batch_size=2", f"{S}.joint_train.train.pref_batch_size=2",
            f"{S}.evaluate.ranker_model={judge}", f"{S}.evaluate.max_instructions=2",
            f"{S}.evaluate.max_new_tokens=24", f"{S}.evaluate.backend=hf", f"{S}.evaluate.bootstrap_resamples=50")


def test_one_round_of_the_smol_recipe(tmp_path: Path, smollm2_dir: Path) -> None:  # noqa: F811
    ranker = build_reward_checkpoint(tmp_path / "ranker", seed=1)
    judge = build_reward_checkpoint(tmp_path / "judge", seed=2)
    run_dir = tmp_path / "run"
    summary = run_rounds(compose_run("stage=iterate", "recipe=smol", f"run_dir={run_dir}",
                                     *smoke_budget(ranker, judge)))
    for stage in ("create_instructions", "generate", "rank", "joint_train", "evaluate"):
        assert is_complete(stage_dir(run_dir, 0, stage)), stage
    assert not (run_dir / "round_00" / "prepare").exists()  # real model and data: no embedded world
    pairs = read_manifest(stage_dir(run_dir, 0, "rank"))["metrics"]["pairs"]
    training = read_manifest(stage_dir(run_dir, 0, "joint_train"))
    assert pairs >= 1 and training["inputs"]["data.preference"]["path"].endswith("rank/pairs.jsonl")
    assert (stage_dir(run_dir, 0, "joint_train") / "model" / "merged" / "model.safetensors").is_file()
    report = json.loads((stage_dir(run_dir, 0, "evaluate") / "eval.json").read_text())
    (key,) = report["models"]
    assert report["settings"]["win_rate_baseline"]["spec"] == "policy"
    assert 0.0 <= report["results"]["win_rate"][key]["win_rate"]["value"] <= 1.0
    assert report["settings"]["judge"]["fingerprint"] != read_manifest(stage_dir(run_dir, 0, "rank"))[
        "inputs"]["ranker_model"]["fingerprint"]  # the judge did not rank the training pairs
    assert [row["round"] for row in summary["rows"]] == ["base", 0] and summary["cost"][0]["total_s"] > 0
