"""Every recipe runs one small round through ``stage=iterate`` on the embedded world (world=ci), with tiny ranker
checkpoints where the recipe ranks with a model. The toy recipe runs for two rounds in tests/test_iterate.py."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from alignment.ranking.tiny import build_pairrm_checkpoint, build_reward_checkpoint
from pipeline.artifacts import is_complete, read_manifest
from pipeline.layout import stage_dir
from stages.compose import compose_run
from stages.iterate import run_rounds

S = "++recipe.stage_settings"
SMALL = ("world=ci", "rounds=1", "stage.progress=false", "data.eval_tasks.max_rows=40",
         f"{S}.create_instructions.n_instructions=24", f"{S}.generate.n=3", f"{S}.generate.max_new_tokens=12",
         f"{S}.generate.backend=hf", f"{S}.evaluate.backend=hf", f"{S}.joint_train.train.max_steps=4",
         f"{S}.joint_train.train.eval_every=2", f"{S}.joint_train.train.save_every=2",
         f"{S}.joint_train.train.eval_max_rows=16")


@pytest.fixture(scope="module")
def rankers(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Randomly initialised PairRM and reward-model checkpoints (scores are meaningless but real)."""
    root = tmp_path_factory.mktemp("rankers")
    return {"pairrm": build_pairrm_checkpoint(root / "pairrm"), "reward": build_reward_checkpoint(root / "reward")}


def recipe_overrides(recipe: str, rankers: dict[str, Path]) -> tuple[str, ...]:
    return {
        # the tiny world model writes no usable task lists: the seed prompts keep the round fed
        "aipo": (f"{S}.create_instructions.backend=hf", f"{S}.create_instructions.include_seeds=true",
                 f"{S}.create_instructions.max_new_tokens=24", f"{S}.create_instructions.requests_per_round=4",
                 f"{S}.create_instructions.max_rounds=2", f"{S}.rank.ranker_model={rankers['pairrm']}",
                 f"{S}.rank.source_max_tokens=64", f"{S}.rank.candidate_max_tokens=16"),
        "bipost": (f"{S}.filter.max_steps=4", f"{S}.filter.batch_size=8"),
        "rlhflow": (f"{S}.rank.ranker_model={rankers['reward']}",),
    }[recipe]


def run_recipe(recipe: str, run_dir: Path, world: Path, rankers: dict[str, Path]) -> dict[str, Any]:
    run = compose_run("stage=iterate", f"recipe={recipe}", f"run_dir={run_dir}", f"world_dir={world}", *SMALL,
                      *recipe_overrides(recipe, rankers))
    summary: dict[str, Any] = run_rounds(run)
    for stage in run.recipe.stages:
        assert is_complete(stage_dir(run_dir, 0, stage)), (recipe, stage)
    assert json.loads((run_dir / "iterate" / "summary.json").read_text()) == summary
    assert [row["round"] for row in summary["rows"]] == ["base", 0]
    return summary


def manifest(run_dir: Path, stage: str) -> dict[str, Any]:
    return read_manifest(stage_dir(run_dir, 0, stage))


def test_bipost_trains_on_the_rows_its_filter_kept(prepared_world: Path, rankers: dict[str, Path],
                                                   tmp_path: Path) -> None:
    summary = run_recipe("bipost", tmp_path, prepared_world, rankers)
    kept = manifest(tmp_path, "filter")["metrics"]
    assert kept["candidates"] == 200 and kept["kept"] == 140  # keep_fraction 0.7 of the ci world's 200 candidates
    training = manifest(tmp_path, "joint_train")
    assert training["inputs"]["data.sft"]["path"] == str(stage_dir(tmp_path, 0, "filter") / "filtered.jsonl")
    assert training["metrics"]["data"]["sft"]["rows"] == 140
    assert training["metrics"]["steps"] == 4
    assert summary["rows"][1]["pairs"] == manifest(tmp_path, "rank")["metrics"]["pairs"] > 0
    assert "verifier/accuracy" in summary["rows"][1]


def test_aipo_self_instructs_ranks_with_pairrm_and_trains_the_aipo_loss(
        prepared_world: Path, rankers: dict[str, Path], tmp_path: Path) -> None:
    summary = run_recipe("aipo", tmp_path, prepared_world, rankers)
    prompts = manifest(tmp_path, "create_instructions")["metrics"]
    assert prompts["source"] == "self_instruct" and prompts["prompts"] == prompts["seed_instructions"] + \
        prompts["generated"]
    ranked = manifest(tmp_path, "rank")["metrics"]
    assert ranked["ranker"] == "pairrm" and ranked["prompts"] == prompts["prompts"]
    assert ranked["ranker_counts"]["comparisons"] == ranked["prompts"] * 3 * 2  # n=3: 3 pairs in both orders
    training = manifest(tmp_path, "joint_train")
    assert training["config"]["loss"]["name"] == "aipo" and training["config"]["stage"]["reference"] == "previous"
    assert training["metrics"]["steps_per_objective"] == {"preference": 4, "sft": 0}
    assert {"preference/pref_loss", "sft_loss/sft_loss"} <= set(summary["rows"][1])


def test_rlhflow_scores_every_sample_with_the_reward_model_against_the_initial_reference(
        prepared_world: Path, rankers: dict[str, Path], tmp_path: Path) -> None:
    summary = run_recipe("rlhflow", tmp_path, prepared_world, rankers)
    ranked = manifest(tmp_path, "rank")["metrics"]
    assert ranked["ranker"] == "reward_model" and ranked["ranker_counts"]["scored"] == 24 * 3
    training = manifest(tmp_path, "joint_train")
    assert training["config"]["stage"]["reference"] == "initial" and training["config"]["loss"]["name"] == "dpo"
    assert training["inputs"]["data.preference"]["path"] == str(stage_dir(tmp_path, 0, "rank") / "pairs.jsonl")
    # the base row compares the base model with itself as the DPO reference: every implicit reward is zero
    base = summary["rows"][0]
    assert base["preference/reward_margin"] == pytest.approx(0.0, abs=1e-6)
    assert base["preference/reward_accuracy"] == 0.0  # a tie is not a win
