"""The ``recipe`` section: which stages one round of the iterative loop runs, and each stage's settings.

A recipe (``recipe=<name>``, ``configs/recipe/<name>.yaml``) sets the shared sections (model, data, objective,
loss) at the top level and keeps what belongs to one stage under ``recipe.stage_settings.<stage>``; those are
merged into that stage's typed config whenever it runs (command-line ``stage.*`` keys still win), so a key that
the stage does not have is an error, reported before anything runs.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

ROUND_STAGES = ("create_instructions", "generate", "rank", "filter", "joint_train", "evaluate")


@dataclass
class RecipeConfig:
    """``name`` ("" = no recipe), the ``stages`` of one round in order, and ``stage_settings`` per stage."""

    name: str = ""
    description: str = ""
    stages: list[str] = field(default_factory=list)
    stage_settings: dict[str, Any] = field(default_factory=dict)

    def validate(self) -> list[str]:
        problems: list[str] = []
        for name in self.stages:
            if name not in ROUND_STAGES:
                problems.append(f"recipe.stages: {name!r} is not a round stage ({', '.join(ROUND_STAGES)})")
        for name in self.stage_settings:
            if name not in self.stages:
                problems.append(f"recipe.stage_settings.{name}: {name!r} is not in recipe.stages {self.stages}")
            else:
                problems += settings_problems(name, self.stage_settings[name])
        if self.name and not self.stages:
            problems.append(f"recipe {self.name!r} lists no stages")
        return problems


def settings_problems(stage: str, settings: Any) -> list[str]:
    """Problems merging ``settings`` into stage ``stage``'s typed config (unknown keys, wrong types)."""
    try:
        stage_config(stage, settings)
    except Exception as error:  # omegaconf raises several error types; all mean the same to the user
        message = str(error).splitlines()[0]
        key = getattr(error, "full_key", None)  # e.g. "train.bogus": name the whole key the user wrote
        return [f"recipe.stage_settings.{stage}{'.' + key if key else ''}: {message}"]
    return []


def stage_config(stage: str, settings: Any = None) -> Any:
    """Stage ``stage``'s typed config with ``settings`` (a mapping) merged over its defaults."""
    from omegaconf import OmegaConf

    from stages.config.stage_configs import STAGE_CONFIGS

    node = OmegaConf.structured(STAGE_CONFIGS[stage])
    if settings:
        node = OmegaConf.merge(node, settings)
    return OmegaConf.to_object(node)


def apply_stage_settings(cfg: Any, overrides: list[str]) -> None:
    """Merge ``recipe.stage_settings.<stage>`` into ``cfg.stage`` (a composed DictConfig), then re-apply the
    command line's ``stage.*`` overrides so that they win over the recipe."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from omegaconf import OmegaConf

    from stages.config.errors import ConfigError

    settings = cfg.recipe.stage_settings.get(cfg.stage.name)
    if not settings:
        return
    problems = settings_problems(cfg.stage.name, settings)
    if problems:  # the same readable problem validate() reports, not omegaconf's traceback
        raise ConfigError(problems)
    cfg.stage = OmegaConf.merge(cfg.stage, settings)
    for override in OverridesParser.create().parse_overrides(overrides):
        key = override.key_or_group
        if key.startswith("stage.") and not override.is_delete():
            OmegaConf.update(cfg, key, override.value(), merge=False)


def with_open_stage_settings(overrides: list[str]) -> list[str]:
    """``recipe.stage_settings.<stage>.<key>=v`` as ``++...`` (add or replace): the settings are a free-form
    mapping, so a key the recipe file does not set must still be accepted (the stage's schema checks it)."""
    return [f"++{o}" if o.startswith("recipe.stage_settings.") else o for o in overrides]
