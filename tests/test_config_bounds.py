"""Values that compose but are wrong are ``validate()`` problems, reported before any model loads; a group
option that does not exist is answered with the real options (not the ConfigStore's schemas)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from stages import iterate
from stages.compose import compose_run
from stages.config.errors import ConfigError
from stages.config.store import check_overrides, group_options
from tests.test_cli import cli_env
from tests.watchdog import run_watched

JOINT = "stage=joint_train"
# (stage, override, the problem reported)
BAD_VALUES = [
    (JOINT, "stage.train.weight_decay=-0.5", "stage.train.weight_decay must be >= 0 (got -0.5)"),
    (JOINT, "stage.train.max_grad_norm=-1", "stage.train.max_grad_norm must be >= 0 (got -1.0)"),
    (JOINT, "stage.train.eval_max_rows=-1", "stage.train.eval_max_rows must be >= 1 (got -1)"),
    (JOINT, "stage.train.eval_max_rows=0", "stage.train.eval_max_rows must be >= 1 (got 0)"),
    (JOINT, "stage.train.keep_checkpoints=-1", "stage.train.keep_checkpoints must be >= 1 (got -1)"),
    (JOINT, "stage.train.lr=nan", "stage.train.lr must be a finite number (got nan)"),
    (JOINT, "stage.early_stop_eps=-0.1", "stage.early_stop_eps must be >= 0 or null (got -0.1)"),
    (JOINT, "stage.num_threads=-2", "stage.num_threads must be >= 0 (got -2)"),
    (JOINT, "stage.log_every=0", "stage.log_every must be >= 1 (got 0)"),
    (JOINT, "stage.ref_pareto=[[1.0,inf]]", "stage.ref_pareto[0][1] must be a finite number (got inf)"),
    (JOINT, "model.lora.alpha=0", "model.lora.alpha must be > 0 (got 0)"),
    (JOINT, "objective.sft_opt=nan", "objective.sft_opt must be a finite number (got nan)"),
    ("stage=filter", "stage.max_grad_norm=-1", "stage.max_grad_norm must be >= 0 (got -1.0)"),
    ("stage=filter", "stage.rho_min=0.5", "stage.rho_min must be <= stage.rho (got 0.5 > 0.3)"),
    ("stage=filter", "stage.threshold=2.5", "stage.threshold must be in (0, 2.0) for stage.keep_rule=threshold and "
                                            "stage.activation=sigmoid, else it keeps every row or none (got 2.5)"),
    ("stage=filter", "stage.threshold=0", "stage.threshold must be in (0, inf) for stage.keep_rule=threshold and "
                                          "stage.activation=softmax, else it keeps every row or none (got 0.0)"),
    ("stage=generate", "stage.shard_wait_timeout_s=0", "stage.shard_wait_timeout_s must be > 0 (got 0.0)"),
    ("stage=generate", "stage.max_model_len=0", "stage.max_model_len must be >= 1 or null (got 0)"),
    ("stage=rank", "stage.shard_wait_timeout_s=-5", "stage.shard_wait_timeout_s must be > 0 (got -5.0)"),
    ("stage=evaluate", "stage.judge_temperature=-1", "stage.judge_temperature must be >= 0 (got -1.0)"),
    ("stage=evaluate", "stage.judge_max_new_tokens=0", "stage.judge_max_new_tokens must be >= 1 (got 0)"),
    ("stage=evaluate", "stage.reward_max_tokens=-3", "stage.reward_max_tokens must be >= 1 (got -3)"),
    ("stage=create_instructions", "stage.top_p=nan", "stage.top_p must be a finite number (got nan)"),
    ("stage=prepare", "world.pretrain_lr=0", "world.pretrain_lr must be > 0 (got 0.0)"),
]
EXTRA = {"stage.rho_min=0.5": ("stage.rho=0.3",), "stage.threshold=2.5": ("stage.keep_rule=threshold",
                                                                         "stage.activation=sigmoid"),
         "stage.threshold=0": ("stage.keep_rule=threshold",)}


@pytest.mark.parametrize(("stage", "override", "problem"), BAD_VALUES, ids=[o for _, o, _ in BAD_VALUES])
def test_a_wrong_value_is_a_validate_problem(stage: str, override: str, problem: str) -> None:
    run = compose_run(stage, override, *EXTRA.get(override, ()))
    assert problem in run.validate()


def test_the_defaults_of_every_stage_still_validate() -> None:
    for stage in ("prepare", "create_instructions", "generate", "rank", "filter", "joint_train", "evaluate"):
        assert compose_run(f"stage={stage}").validate() == [], stage


def test_a_recipe_setting_is_checked_before_any_stage_runs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    ran: list[str] = []
    monkeypatch.setattr(iterate, "run_stage", lambda plan: ran.append(plan.stage.name))
    run = compose_run("stage=iterate", "recipe=toy", f"run_dir={tmp_path}",
                      "++recipe.stage_settings.joint_train.train.keep_checkpoints=-1")
    with pytest.raises(ConfigError, match=r"round 0, 1, 2: recipe\.stage_settings\.joint_train\.train\.keep_checkpoints must be >= 1"):
        iterate.run_rounds(run)
    assert ran == []


def test_the_command_reports_wrong_training_values_before_any_model_loads(tmp_path: Path) -> None:
    result = run_watched([sys.executable, "-m", "stages.cli", JOINT, f"run_dir={tmp_path / 'run'}",
                          "stage.train.weight_decay=-0.5", "stage.train.max_grad_norm=-1",
                          "stage.train.eval_max_rows=-1", "stage.train.keep_checkpoints=-1"], env=cli_env())
    assert result.returncode == 2 and "4 problem(s)" in result.stderr
    assert "Traceback" not in result.stderr and not (tmp_path / "run").exists()


@pytest.mark.parametrize("group", ["stage", "model", "data", "objective", "loss", "world", "recipe"])
def test_an_unknown_option_lists_the_options_without_schemas(group: str) -> None:
    with pytest.raises(ConfigError) as raised:
        check_overrides([f"{group}=bogus"])
    message = str(raised.value)
    assert f"{group}=bogus is not an option of {group}" in message
    assert "_schema" not in message and group_options(group)
    assert all(option in message for option in group_options(group))


def test_a_schema_is_not_an_option_and_a_sweep_is_checked_per_choice() -> None:
    with pytest.raises(ConfigError, match="loss=loss_schema is not an option"):
        check_overrides(["loss=loss_schema"])
    with pytest.raises(ConfigError, match=r"loss=bogus is not an option of loss; options: aipo, "):
        check_overrides(["loss=dpo,bogus,ipo"])
    check_overrides(["loss=dpo,ipo", "stage=verify", "recipe=toy", "model=smollm2"])


def test_the_command_answers_an_unknown_loss_with_the_real_options(tmp_path: Path) -> None:
    result = run_watched([sys.executable, "-m", "stages.cli", "loss=bogus", f"run_dir={tmp_path}"], env=cli_env())
    assert result.returncode == 2
    assert "loss=bogus is not an option of loss; options: aipo, apo_down" in result.stderr
    assert "_schema" not in result.stderr
