"""Merging ``recipe.stage_settings.<stage>`` into stage configs, and checking those settings against the stage
schemas (unknown keys, wrong types) before anything runs."""

from __future__ import annotations

from typing import Any

from stages.config.errors import ConfigError
from stages.config.recipe import RecipeConfig
from stages.config.stage_configs import STAGE_CONFIGS


def recipe_problems(recipe: RecipeConfig) -> list[str]:
    """Problems merging each stage's settings of ``recipe`` into that stage's typed config."""
    return [problem for name, settings in recipe.stage_settings.items() if name in recipe.stages
            for problem in settings_problems(name, settings)]


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

    node = OmegaConf.structured(STAGE_CONFIGS[stage])
    if settings:
        node = OmegaConf.merge(node, settings)
    return OmegaConf.to_object(node)


def apply_stage_settings(cfg: Any, overrides: list[str]) -> None:
    """Merge ``recipe.stage_settings.<stage>`` into ``cfg.stage`` (a composed DictConfig), then re-apply the
    command line's ``stage.*`` overrides so that they win over the recipe."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from omegaconf import OmegaConf

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
