"""Round wiring and recipes without models: artifact references, which policy and reference each round uses,
recipe stage settings merged into stage configs (command line wins), and the per-round summary table."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from pipeline.artifacts import MANIFEST, SUCCESS
from pipeline.layout import RunLayout, stage_dir, trained_model
from pipeline.rounds import (
    ArtifactRef,
    parse_artifact_ref,
    reference_for_round,
    resolve_model_ref,
    resolve_ref,
)
from pipeline.rounds import policy_for_round as policy_input_for_round
from pipeline.summary import headline_columns, summary_markdown, summary_rows
from stages.builders.paths import dataset_path, policy_path, reference_input
from stages.compose import CONFIG_DIR, compose_run
from stages.config.errors import ConfigError
from stages.config.recipe import RecipeConfig
from stages.config.recipe_settings import stage_config
from stages.config.stage_configs import STAGE_CONFIGS
from stages.config.validate import validate_run
from stages.iterate import planned_runs, run_rounds, write_summary

RECIPES = sorted(p.stem for p in (Path(CONFIG_DIR) / "recipe").glob("*.yaml") if p.stem != "none")
# what a recipe cannot know: the checkpoint of a ranker model (required where the recipe ranks with one)
RECIPE_EXTRAS = {"rlhflow": ("recipe.stage_settings.rank.ranker_model=/models/reward",),
                 "smol": ("recipe.stage_settings.rank.ranker_model=/models/reward",
                          "recipe.stage_settings.evaluate.ranker_model=/models/judge")}
LORA_PROBLEM = "recipe.stage_settings.joint_train.save_merged=true"


def policy_for_round(run_dir: str | Path, round_index: int, base: str) -> str:
    return policy_input_for_round(RunLayout.of(run_dir), round_index, base).path


def reference_path(run: Any, choice: str) -> str | None:
    found = reference_input(run, choice)
    return None if found is None else found.path


def make_model(path: Path, merged: bool = False) -> Path:
    (path / "model" / ("merged" if merged else "")).mkdir(parents=True, exist_ok=True)
    return path


# --- artifact references ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("text", "expected"), [
    ("round:rank/pairs.jsonl", ArtifactRef(0, "rank", "pairs.jsonl")),
    ("prev:joint_train", ArtifactRef(-1, "joint_train", "")),
    ("prev:generate/shards/a.jsonl", ArtifactRef(-1, "generate", "shards/a.jsonl")),
    ("world:golden", None),
    ("/data/round:rank/pairs.jsonl", None),
    ("HuggingFaceH4/ultrafeedback", None),
])
def test_parse_artifact_ref(text: str, expected: ArtifactRef | None) -> None:
    assert parse_artifact_ref(text) == expected


@pytest.mark.parametrize("text", ["round:", "prev:/pairs.jsonl"])
def test_a_reference_without_a_stage_is_an_error_quoting_it(text: str) -> None:
    with pytest.raises(ValueError, match="names no stage"):
        parse_artifact_ref(text)


def test_resolve_ref_maps_this_and_the_previous_round(tmp_path: Path) -> None:
    assert resolve_ref("round:rank/pairs.jsonl", RunLayout.of(tmp_path), 2) == str(tmp_path / "round_02" / "rank" / "pairs.jsonl")
    assert resolve_ref("prev:rank", RunLayout.of(tmp_path), 2) == str(tmp_path / "round_01" / "rank")
    assert resolve_ref("round:filter/filtered.jsonl", RunLayout.of("runs/x"), 0) == "runs/x/round_00/filter/filtered.jsonl"
    assert resolve_ref("world:golden", RunLayout.of(tmp_path), 3) == "world:golden"
    assert resolve_ref("/data/pairs.jsonl", RunLayout.of(tmp_path), 3) == "/data/pairs.jsonl"


def test_prev_in_round_zero_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"'prev:rank' has no previous round in round 0"):
        resolve_ref("prev:rank/pairs.jsonl", RunLayout.of(tmp_path), 0)
    with pytest.raises(ValueError, match="no previous round"):
        resolve_model_ref("prev:joint_train", RunLayout.of(tmp_path), 0)


def test_resolve_model_ref_names_the_model_of_a_bare_joint_train_reference(tmp_path: Path) -> None:
    previous = tmp_path / "round_01" / "joint_train"
    assert resolve_model_ref("prev:joint_train", RunLayout.of(tmp_path), 2).path == str(previous / "model")
    assert resolve_model_ref("prev:joint_train/model", RunLayout.of(tmp_path), 2).path == str(previous / "model")  # a file: as given
    assert resolve_model_ref("round:rank", RunLayout.of(tmp_path), 2).path == str(tmp_path / "round_02" / "rank")
    assert resolve_model_ref("/models/ref", RunLayout.of(tmp_path), 2).path == "/models/ref"
    make_model(previous, merged=True)
    assert resolve_model_ref("prev:joint_train", RunLayout.of(tmp_path), 2).path == str(previous / "model" / "merged")


# --- policy and reference of each round ---------------------------------------------------------------------------


def test_policy_is_the_base_in_round_zero_then_the_previous_rounds_model(tmp_path: Path) -> None:
    assert policy_for_round(tmp_path, 0, "/base") == "/base"
    assert policy_for_round(tmp_path, 1, "/base") == str(tmp_path / "round_00" / "joint_train" / "model")
    assert policy_for_round(tmp_path, 3, "/base") == str(tmp_path / "round_02" / "joint_train" / "model")


def test_the_merged_model_of_a_lora_round_is_preferred(tmp_path: Path) -> None:
    artifact = make_model(stage_dir(tmp_path, 0, "joint_train"))
    assert trained_model(artifact) == artifact / "model"
    make_model(artifact, merged=True)
    assert trained_model(artifact) == artifact / "model" / "merged"
    assert policy_for_round(tmp_path, 1, "/base") == str(artifact / "model" / "merged")


@pytest.mark.parametrize(("choice", "round_index", "expected"), [
    ("initial", 0, None),  # the round's policy is the base model itself: copied, not loaded twice
    ("initial", 2, "/base"),
    ("previous", 0, None),
    ("previous", 2, None),
    ("/models/ref", 0, "/models/ref"),
    ("/models/ref", 2, "/models/ref"),
    ("prev:joint_train", 2, "{run}/round_01/joint_train/model"),
    ("round:joint_train/model", 2, "{run}/round_02/joint_train/model"),
])
def test_reference_for_round(tmp_path: Path, choice: str, round_index: int, expected: str | None) -> None:
    found = reference_for_round(choice, RunLayout.of(tmp_path), round_index, "/base")
    assert (None if found is None else found.path) == (None if expected is None else expected.format(run=tmp_path))


def test_stage_paths_follow_the_round(tmp_path: Path) -> None:
    run = compose_run("stage=joint_train", "recipe=toy", f"run_dir={tmp_path}", "round=2")
    assert dataset_path(run, run.data.preference) == str(tmp_path / "round_02" / "rank" / "pairs.jsonl")
    assert dataset_path(run, run.data.sft) == str(tmp_path / "round_00" / "prepare" / "world" / "golden.jsonl")
    assert policy_path(run) == str(tmp_path / "round_01" / "joint_train" / "model")
    # toy: reference = the run's base model in every round
    assert reference_path(run, run.stage.reference) == str(tmp_path / "round_00" / "prepare" / "model")
    assert reference_path(run, "previous") is None  # the round's starting policy: copied, not loaded
    assert reference_path(run, "initial") == str(tmp_path / "round_00" / "prepare" / "model")
    shared = compose_run("stage=joint_train", "recipe=toy", f"run_dir={tmp_path}", "world_dir=/worlds/ci")
    assert dataset_path(shared, shared.data.sft) == "/worlds/ci/round_00/prepare/world/golden.jsonl"
    assert policy_path(shared) == "/worlds/ci/round_00/prepare/model"  # round 0: the world's base model


# --- recipes and stage settings -----------------------------------------------------------------------------------


def test_a_recipe_sets_its_stage_settings_and_shared_sections() -> None:
    run = compose_run("stage=joint_train", "recipe=toy")
    assert run.stage.train.max_steps == 100 and run.stage.train.eval_every == 50
    assert run.stage.reference == "initial" and run.stage.verifier_eval is False and run.stage.train.lr == 2e-4
    assert run.objective.name == "alright" and run.objective.lambd == 0.75 and run.loss.name == "dpo"
    assert run.data.preference.path == "round:rank/pairs.jsonl" and run.data.sft.path == "world:golden"
    generate = compose_run("stage=generate", "recipe=toy").stage
    assert (generate.n, generate.max_new_tokens, generate.temperature) == (8, 16, 1.0)
    aipo = compose_run("stage=joint_train", "recipe=aipo")
    assert aipo.loss.name == "aipo" and aipo.objective.name == "preference" and aipo.rounds == 3


def test_the_command_line_wins_over_the_recipe() -> None:
    run = compose_run("stage=joint_train", "recipe=toy", "stage.train.max_steps=7", "objective=mix")
    assert run.stage.train.max_steps == 7
    assert run.stage.train.eval_every == 50 and run.stage.reference == "initial"  # the rest of the recipe stays
    assert run.objective.name == "mix" and run.loss.name == "dpo"
    assert compose_run("stage=generate", "recipe=toy", "stage.n=2").stage.n == 2
    changed = compose_run("stage=generate", "recipe=toy", "recipe.stage_settings.generate.n=3")
    assert changed.stage.n == 3 and changed.recipe.stage_settings["generate"]["n"] == 3
    assert compose_run("stage=generate", "recipe=toy", "rounds=5", "run_dir=/r").rounds == 5


def test_an_unknown_stage_setting_is_reported_naming_the_key() -> None:
    bogus = "+recipe.stage_settings.joint_train.train.bogus=1"
    problems = validate_run(compose_run("stage=iterate", "recipe=toy", bogus))
    assert problems == ["recipe.stage_settings.joint_train.train.bogus: Key 'bogus' not in 'TrainSettings'"]
    with pytest.raises(ConfigError, match=r"recipe\.stage_settings\.joint_train\.train\.bogus"):
        compose_run("stage=joint_train", "recipe=toy", bogus)  # the stage it belongs to fails while composing
    wrong_type = validate_run(compose_run("stage=iterate", "recipe=toy", "recipe.stage_settings.generate.n=many"))
    assert len(wrong_type) == 1 and wrong_type[0].startswith("recipe.stage_settings.generate.n:")


def test_recipe_validate_checks_its_stage_list() -> None:
    recipe = RecipeConfig(name="mine", stages=["generate", "train"], stage_settings={"rank": {"ranker": "judge"}})
    problems = recipe.validate()
    assert any("recipe.stages: 'train' is not a round stage" in p for p in problems)
    assert any("recipe.stage_settings.rank: 'rank' is not in recipe.stages" in p for p in problems)
    assert RecipeConfig(name="empty").validate() == ["recipe 'empty' lists no stages"]
    assert RecipeConfig().validate() == []


@pytest.mark.parametrize("recipe", RECIPES)
def test_every_recipe_composes_and_validates_for_each_of_its_stages(recipe: str) -> None:
    extras = RECIPE_EXTRAS.get(recipe, ())
    iterate = compose_run("stage=iterate", f"recipe={recipe}", *extras)
    assert iterate.recipe.name == recipe and validate_run(iterate) == []
    plans = planned_runs(iterate)
    assert [(p.round, p.stage.name) for p in plans] == [(k, s) for k in range(iterate.rounds)
                                                        for s in iterate.recipe.stages]
    for plan in plans[: len(iterate.recipe.stages)]:
        assert plan.validate() == [], (recipe, plan.stage.name)
        # run.sh composes each stage on its own; stage=iterate builds it from defaults + recipe: the same config
        alone = compose_run(f"stage={plan.stage.name}", f"recipe={recipe}", *extras)
        assert alone.validate() == [] and alone.stage == plan.stage, (recipe, plan.stage.name)


def test_rlhflow_needs_a_ranker_model_and_says_so_before_anything_runs(tmp_path: Path) -> None:
    problem = "stage.ranker_model must name a checkpoint (directory or Hub id) for stage.ranker=reward_model"
    assert compose_run("stage=rank", "recipe=rlhflow").validate() == [problem]
    with pytest.raises(ConfigError, match=r"recipe\.stage_settings\.rank\.ranker_model must name a checkpoint"):
        run_rounds(compose_run("stage=iterate", "recipe=rlhflow", f"run_dir={tmp_path / 'run'}", "world=ci"))
    assert not (tmp_path / "run").exists()  # not even the world was built


@pytest.mark.parametrize("stage", sorted(STAGE_CONFIGS))
def test_stage_yaml_files_add_no_values_to_the_dataclass_defaults(stage: str) -> None:
    """stage=iterate builds stage configs from dataclass defaults, so configs/stage/*.yaml must not add any."""
    assert compose_run(f"stage={stage}").stage == STAGE_CONFIGS[stage]()
    assert stage == "prepare" or stage_config(stage) == STAGE_CONFIGS[stage]()


def test_lora_in_a_recipe_needs_merged_weights_for_the_next_round() -> None:
    lora = ("stage=joint_train", "model.lora.enabled=true")
    assert any(LORA_PROBLEM in p for p in compose_run(*lora, "recipe=toy").validate())
    assert compose_run(*lora, "recipe=toy", "++recipe.stage_settings.joint_train.save_merged=true").validate() == []
    assert compose_run(*lora).validate() == []  # a single stage without a recipe may save the adapter alone


# --- the per-round summary ----------------------------------------------------------------------------------------


def evaluation(before: float, after: float) -> dict[str, Any]:
    return {"verifier/policy/accuracy": before, "verifier/round_joint_train/accuracy": after,
            "verifier/round_joint_train/families.count": 0.5, "verifier/policy/tasks": 80, "seconds": 3.0}


def test_summary_rows_put_the_base_first_then_each_rounds_trained_model() -> None:
    rows = summary_rows([evaluation(0.1, 0.2), evaluation(0.2, 0.35)], [{"pairs": 4}, {"pairs": 6}])
    assert rows == [{"round": "base", "verifier/accuracy": 0.1, "verifier/tasks": 80.0},
                    {"round": 0, "pairs": 4, "verifier/accuracy": 0.2, "verifier/families.count": 0.5},
                    {"round": 1, "pairs": 6, "verifier/accuracy": 0.35, "verifier/families.count": 0.5}]
    assert headline_columns(rows) == ["verifier/accuracy", "verifier/tasks"]
    assert summary_markdown(rows, ["pairs", "verifier/accuracy"]).splitlines() == [
        "| round | pairs | verifier/accuracy |", "|---|---|---|", "| base |  | 0.1 |", "| 0 | 4 | 0.2 |",
        "| 1 | 6 | 0.35 |"]


def write_artifact(run_dir: Path, round_index: int, stage: str, metrics: dict[str, Any]) -> None:
    directory = stage_dir(run_dir, round_index, stage)
    directory.mkdir(parents=True)
    (directory / MANIFEST).write_text(json.dumps({"metrics": metrics}))
    (directory / SUCCESS).write_text("")


def test_write_summary_reads_every_rounds_manifests(tmp_path: Path) -> None:
    for k, (before, after) in enumerate([(0.1, 0.2), (0.2, 0.3)]):
        write_artifact(tmp_path, k, "rank", {"pairs": 10 + k})
        write_artifact(tmp_path, k, "joint_train", {"steps": 5})
        write_artifact(tmp_path, k, "evaluate", evaluation(before, after))
    run = compose_run("stage=iterate", "recipe=toy", "rounds=2", f"run_dir={tmp_path}")
    summary = write_summary(run)
    saved = json.loads((tmp_path / "iterate" / "summary.json").read_text())
    assert saved == summary and saved["recipe"] == "toy" and saved["rounds"] == 2
    assert [(r["round"], r.get("pairs"), r["verifier/accuracy"]) for r in saved["rows"]] == [
        ("base", None, 0.1), (0, 10, 0.2), (1, 11, 0.3)]
    table = (tmp_path / "iterate" / "summary.md").read_text()
    assert "| round | pairs | train_steps | verifier/accuracy | verifier/tasks |" in table
    assert (tmp_path / "iterate" / "verifier_accuracy.png").stat().st_size > 0


def test_the_cost_of_each_round_is_broken_down_by_stage(tmp_path: Path) -> None:
    from pipeline.layout import RunLayout
    from pipeline.summary import cost_rows

    for stage, seconds in (("generate", 30.0), ("rank", 10.0), ("joint_train", 50.0), ("evaluate", 10.0)):
        directory = stage_dir(tmp_path, 0, stage)
        directory.mkdir(parents=True)
        (directory / MANIFEST).write_text(json.dumps({"metrics": {}, "timestamps": {"started": 100.0,
                                                                                     "finished": 100.0 + seconds}}))
        (directory / SUCCESS).write_text("")
    (row,) = cost_rows(RunLayout.of(tmp_path), 1, ["create_instructions", "generate", "rank", "joint_train",
                                                  "evaluate"])
    assert row["generate_s"] == 30.0 and row["create_instructions_s"] is None and row["total_s"] == 100.0
    assert (row["generation_share"], row["ranking_share"], row["training_share"]) == (0.3, 0.1, 0.5)


def test_a_win_rate_is_plotted_with_its_interval_and_the_cost_by_stage(tmp_path: Path,
                                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """A metric's CI ends go on its own plot as error bars (no plot of their own); each round's seconds are
    stacked by stage in cost.png."""
    import pipeline.summary as summary_module
    from alignment.evaluation import plots

    drawn: dict[str, Any] = {}

    def spy(series: Any, path: Path, **kwargs: Any) -> Path:
        drawn[Path(path).name] = (series, kwargs)
        return plots.plot_series_with_intervals(series, path, **kwargs)

    monkeypatch.setattr(summary_module, "plot_series_with_intervals", spy)
    for k, (rate, low, high) in enumerate([(0.45, 0.35, 0.55), (0.62, 0.52, 0.71)]):
        write_artifact(tmp_path, k, "joint_train", {"steps": 5})
        write_artifact(tmp_path, k, "evaluate", {"win_rate/round_joint_train/win_rate": rate,
                                                 "win_rate/round_joint_train/win_rate.low": low,
                                                 "win_rate/round_joint_train/win_rate.high": high})
        timing = {"metrics": {}, "timestamps": {"started": 0.0, "finished": 40.0 + k}}
        (stage_dir(tmp_path, k, "joint_train") / MANIFEST).write_text(json.dumps(timing))
    write_summary(compose_run("stage=iterate", "recipe=toy", "rounds=2", f"run_dir={tmp_path}",
                              "recipe.stages=[joint_train,evaluate]"))
    out = tmp_path / "iterate"
    assert sorted(p.name for p in out.glob("*.png")) == ["cost.png", "win_rate_win_rate.png"]
    series, kwargs = drawn["win_rate_win_rate.png"]
    assert series == {"win_rate/win_rate": [("0", 0.45, 0.35, 0.55), ("1", 0.62, 0.52, 0.71)]}
    assert kwargs["reference_line"] == 0.5
    cost = json.loads((out / "summary.json").read_text())["cost"]
    assert [row["joint_train_s"] for row in cost] == [40.0, 41.0] and (out / "cost.png").stat().st_size > 0
