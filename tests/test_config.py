"""Tests for the typed configuration (stages/config): composition of every YAML option, unknown keys, validation
that reports every problem at once, the semantic (fingerprinted) part of a config and the saved config.yaml.
"""

from __future__ import annotations

import types
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from pipeline.artifacts import compute_fingerprint, read_manifest
from pipeline.layout import stage_dir
from pipeline.protocol import StageContext, StageResult
from stages import runner
from stages.config.errors import ConfigError
from stages.config.run_config import RunConfig
from stages.config.sections import (
    DataConfig,
    LossConfig,
    ModelConfig,
    ObjectiveConfig,
    TrackingConfig,
    WorldConfig,
)
from stages.config.semantic import semantic_config
from stages.config.stage_configs import STAGE_CONFIGS
from stages.config.store import check_overrides, register_configs
from stages.config.validate import validate_or_raise

CONFIG_DIR = Path(__file__).resolve().parent.parent / "configs"
GROUPS = ("stage", "model", "data", "objective", "loss", "world")
# options that cannot compose on their own, and the overrides they need
REQUIRED_EXTRAS = {("model", "hf"): ["model.name_or_path=some-org/some-lm"], ("stage", "iterate"): ["recipe=toy"]}


def group_options() -> list[tuple[str, str]]:
    return [(group, path.stem) for group in GROUPS for path in sorted((CONFIG_DIR / group).glob("*.yaml"))]


@pytest.fixture(scope="module", autouse=True)
def hydra_context() -> Iterator[None]:
    register_configs()
    with initialize_config_dir(version_base="1.3", config_dir=str(CONFIG_DIR)):
        yield


def compose_run(*overrides: str) -> RunConfig:
    run = OmegaConf.to_object(compose("config", overrides=list(overrides)))
    assert isinstance(run, RunConfig)
    return run


# --- composition -------------------------------------------------------------------------------------------------


def test_every_group_has_options() -> None:
    groups = {group for group, _ in group_options()}
    assert groups == set(GROUPS)
    assert {name for group, name in group_options() if group == "stage"} == set(STAGE_CONFIGS)


@pytest.mark.parametrize(("group", "option"), group_options())
def test_every_option_composes_to_dataclasses_and_validates(group: str, option: str) -> None:
    run = compose_run(f"{group}={option}", *REQUIRED_EXTRAS.get((group, option), []))
    assert isinstance(run.model, ModelConfig)
    assert isinstance(run.data, DataConfig)
    assert isinstance(run.objective, ObjectiveConfig)
    assert isinstance(run.loss, LossConfig)
    assert isinstance(run.world, WorldConfig)
    assert isinstance(run.tracking, TrackingConfig)
    expected_stage = option if group == "stage" else "joint_train"
    assert type(run.stage) is STAGE_CONFIGS[expected_stage]
    assert run.stage.name == expected_stage
    if group in ("loss", "objective"):
        assert getattr(run, group).name == option  # the file selects the loss/objective it is named after
    assert run.validate() == []


def test_defaults_compose_and_validate() -> None:
    run = compose_run()
    assert run.stage.name == "joint_train"
    assert run.model.name_or_path == "world" and run.model.size == "tiny"
    assert run.loss.name == "dpo" and run.objective.name == "alright"
    assert run.validate() == []


def test_option_values_reach_the_dataclasses() -> None:
    run = compose_run("world=ci", "loss=simpo", "model=hf", "model.name_or_path=/models/lm")
    assert run.world.pretrain_steps == 100 and run.world.sft_train == 300
    assert run.world.seed == 1234  # not set by ci.yaml: the schema default
    assert (run.loss.beta, run.loss.gamma) == (2.5, 1.375)
    assert run.model.name_or_path == "/models/lm"


def test_model_hf_without_a_name_is_rejected() -> None:
    with pytest.raises(Exception, match="name_or_path"):
        run = compose_run("model=hf")
        problems = run.validate()
        if problems:
            raise ConfigError(problems)


# --- unknown keys ------------------------------------------------------------------------------------------------


def test_unknown_key_fails_in_compose() -> None:
    with pytest.raises(Exception, match="world.sede"):
        compose("config", overrides=["world.sede=7"])


def test_check_overrides_names_the_unknown_key_and_lists_valid_ones() -> None:
    with pytest.raises(ConfigError) as raised:
        check_overrides(["stage=prepare", "world.sede=7"])
    message = str(raised.value)
    assert "'world.sede'" in message
    assert "'sede' is not a field of world" in message
    for valid in ("seed", "pretrain_steps", "vocab_size"):
        assert valid in message


def test_check_overrides_reports_every_unknown_key() -> None:
    with pytest.raises(ConfigError) as raised:
        check_overrides(["colour=red", "loss.betta=1", "stage.train.lrr=1"])
    assert len(raised.value.problems) == 3
    assert "'colour'" in raised.value.problems[0] and "run_dir" in raised.value.problems[0]
    assert "'loss.betta'" in raised.value.problems[1] and "beta" in raised.value.problems[1]
    assert "'stage.train.lrr'" in raised.value.problems[2] and "warmup_ratio" in raised.value.problems[2]


def test_check_overrides_knows_which_stage_has_which_fields() -> None:
    check_overrides(["stage=joint_train", "stage.train.lr=0.1"])
    with pytest.raises(ConfigError, match="'train' is not a field of stage"):
        check_overrides(["stage=prepare", "stage.train.lr=0.1"])


def test_check_overrides_accepts_valid_keys_groups_and_hydra() -> None:
    check_overrides(["stage=generate", "model=hf", "model.name_or_path=/m", "loss=ipo", "world.seed=7",
                     "run_dir=/tmp/x", "stage.n=2", "data.sft.path=a.jsonl", "hydra.verbose=true",
                     "model.lora.r=8"])


def test_check_overrides_catches_appended_unknown_keys() -> None:
    # `+key=value` appends to a config: Hydra accepts it and OmegaConf.to_object silently drops it
    with pytest.raises(ConfigError, match="'world.sede'"):
        check_overrides(["+world.sede=7"])
    with pytest.raises(ConfigError, match="'world.sede'"):
        check_overrides(["++world.sede=7"])


# --- validation --------------------------------------------------------------------------------------------------


def test_validate_reports_every_problem_at_once() -> None:
    run = compose_run("stage.train.lr=-1", "data.max_length=2", "objective.lambd=2")
    problems = run.validate()
    assert len(problems) == 3
    joined = "\n".join(problems)
    assert "stage.train.lr must be > 0 (got -1.0)" in joined
    assert "data.max_length must be >= 8 (got 2)" in joined
    assert "objective.lambd must be in [0, 1] (got 2.0)" in joined
    with pytest.raises(ConfigError) as raised:
        validate_or_raise(run)
    assert raised.value.problems == problems
    assert "3 problem(s)" in str(raised.value)


def test_validate_only_checks_sections_the_stage_reads() -> None:
    # prepare reads world and model.size, not objective: a bad objective does not block it
    run = compose_run("stage=prepare", "objective.lambd=2", "world.golden=-1")
    assert run.validate() == ["world.golden=-1 must be >= 0"]


# --- semantic config and fingerprints ----------------------------------------------------------------------------


def fingerprint(run: RunConfig) -> str:
    return compute_fingerprint(run.stage.name, 1, semantic_config(run), {})


def test_runtime_fields_do_not_change_the_fingerprint() -> None:
    base = compose_run("stage=joint_train")
    for override in ("stage.log_every=1", "stage.progress=false", "stage.strategy=ddp", "tracking.backends=[wandb]",
                     "stage.train.keep_checkpoints=5", "run_dir=/elsewhere", "force=true"):
        changed = compose_run("stage=joint_train", override)
        assert semantic_config(changed) == semantic_config(base), override
        assert fingerprint(changed) == fingerprint(base), override
    assert "log_every" not in semantic_config(base)["stage"]


def test_semantic_fields_change_the_fingerprint() -> None:
    base = compose_run("stage=joint_train")
    changed = compose_run("stage=joint_train", "loss.beta=0.2")
    assert semantic_config(changed)["loss"]["beta"] == 0.2
    assert fingerprint(changed) != fingerprint(base)
    assert fingerprint(compose_run("stage=joint_train", "stage.train.lr=0.1")) != fingerprint(base)


def test_prepare_fingerprint_ignores_sections_it_does_not_read() -> None:
    base = compose_run("stage=prepare")
    assert set(semantic_config(base)) == {"stage", "world", "model.size"}
    assert fingerprint(compose_run("stage=prepare", "loss.beta=0.2")) == fingerprint(base)
    assert fingerprint(compose_run("stage=prepare", "world.seed=7")) != fingerprint(base)
    assert fingerprint(compose_run("stage=prepare", "model=small")) != fingerprint(base)


# --- the saved config.yaml ---------------------------------------------------------------------------------------


def test_saved_config_yaml_is_the_resolved_config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def fake_run(run: RunConfig, ctx: StageContext) -> StageResult:
        return StageResult(outputs=[], metrics={"ran": True})

    fake_stage = types.SimpleNamespace(STAGE_VERSION=1, DISTRIBUTED=False, node_worker=None, inputs=lambda run: {},
                                       run=fake_run)
    monkeypatch.setattr(runner, "stage_module", lambda name: fake_stage)
    overrides = ["stage=prepare", "world=ci", "world.seed=7", f"run_dir={tmp_path}", "stage.log_every=3"]
    composed = compose("config", overrides=overrides)
    run = OmegaConf.to_object(composed)
    assert isinstance(run, RunConfig)
    manifest = runner.run_stage(run)
    final = stage_dir(tmp_path, 0, "prepare")
    assert manifest == read_manifest(final)
    text = (final / "config.yaml").read_text()
    assert "${" not in text and "???" not in text
    saved: dict[str, Any] = OmegaConf.to_container(OmegaConf.load(final / "config.yaml"))  # type: ignore[assignment]
    assert saved == OmegaConf.to_container(composed, resolve=True)
    assert saved["world"]["seed"] == 7 and saved["world"]["sft_train"] == 300 and saved["stage"]["log_every"] == 3
    assert "config.yaml" in manifest["outputs"]
