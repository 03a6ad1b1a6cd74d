"""Registration of the config dataclasses in Hydra's ConfigStore, and checks of command-line keys.

YAML files under ``configs/<group>/`` extend the schemas stored here (``defaults: [<name>_schema]``), so every
node is typed and an unknown key fails.
"""

from __future__ import annotations

import dataclasses
import typing
from typing import Any

from hydra.core.config_store import ConfigStore

from stages.config.errors import ConfigError
from stages.config.run_config import RunConfig
from stages.config.sections import DataConfig, LossConfig, ModelConfig, ObjectiveConfig, WorldConfig
from stages.config.stage_configs import STAGE_CONFIGS

DEFAULT_STAGE = "joint_train"
GROUP_SCHEMAS: dict[str, type] = {
    "model": ModelConfig,
    "data": DataConfig,
    "objective": ObjectiveConfig,
    "loss": LossConfig,
    "world": WorldConfig,
}


def register_configs() -> None:
    """Store ``run_schema`` and one ``<group>/<name>_schema`` per group option in the ConfigStore."""
    store = ConfigStore.instance()
    store.store(name="run_schema", node=RunConfig)
    for name, cls in STAGE_CONFIGS.items():
        store.store(group="stage", name=f"{name}_schema", node=cls)
    for group, cls in GROUP_SCHEMAS.items():
        store.store(group=group, name=f"{group}_schema", node=cls)


def _field_types(cls: type) -> dict[str, Any]:
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls)}


def _dataclass_of(annotation: Any) -> type | None:
    if dataclasses.is_dataclass(annotation):
        return annotation  # type: ignore[return-value]
    for arg in typing.get_args(annotation):
        if dataclasses.is_dataclass(arg):
            return arg  # type: ignore[return-value]
    return None


def check_key(key: str, stage: str) -> str | None:
    """A readable problem if ``key`` (e.g. ``stage.train.lr``) names no config field, else None."""
    parts = key.split(".")
    cls: type | None = RunConfig
    walked: list[str] = []
    for part in parts:
        if cls is None:
            return None  # below a dict/list value: Hydra checks the value itself
        if cls is RunConfig and part == "stage":
            cls, walked = STAGE_CONFIGS.get(stage), walked + [part]
            if cls is None:
                return None
            continue
        fields = _field_types(cls)
        if part not in fields:
            where = ".".join(walked) or "the top level"
            valid = ", ".join(sorted(fields))
            return f"unknown config key '{key}': '{part}' is not a field of {where} ({cls.__name__}); valid: {valid}"
        cls, walked = _dataclass_of(fields[part]), walked + [part]
    return None


def check_overrides(overrides: list[str]) -> None:
    """Fail on command-line overrides naming unknown keys, listing the valid ones (before Hydra composes)."""
    # `+key=` / `++key=` are checked too: Hydra would append an unknown key and to_object would drop it silently
    assignments = [o.lstrip("+") for o in overrides if "=" in o and not o.startswith(("~", "-"))]
    assignments = [o for o in assignments if not o.startswith("hydra")]
    stage = DEFAULT_STAGE
    for item in assignments:
        key, value = item.split("=", 1)
        if key == "stage":
            stage = value.split(",")[0]
    problems = []
    for item in assignments:
        key = item.split("=", 1)[0]
        if "." in key or key not in ("stage", *GROUP_SCHEMAS):
            problem = check_key(key, stage)
            if problem:
                problems.append(problem)
    if problems:
        raise ConfigError(problems)
