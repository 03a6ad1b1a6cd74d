"""Registration of the config dataclasses in Hydra's ConfigStore, and checks of command-line keys.

YAML files under ``configs/<group>/`` extend the schemas stored here (``defaults: [<name>_schema]``), so every
node is typed and an unknown key fails.
"""

from __future__ import annotations

import dataclasses
import typing
from pathlib import Path
from typing import Any

from hydra.core.config_store import ConfigStore

from stages.config.errors import ConfigError
from stages.config.run_config import RunConfig
from stages.config.sections import DataConfig, LossConfig, ModelConfig, ObjectiveConfig, WorldConfig
from stages.config.stage_configs import STAGE_CONFIGS

DEFAULT_STAGE = "joint_train"
CONFIG_ROOT = Path(__file__).resolve().parents[2] / "configs"
SCHEMA_SUFFIX = "_schema"  # the typed nodes that YAML options extend; never an option themselves
GROUP_SCHEMAS: dict[str, type] = {
    "model": ModelConfig,
    "data": DataConfig,
    "objective": ObjectiveConfig,
    "loss": LossConfig,
    "world": WorldConfig,
}
OPTION_GROUPS = ("stage", "recipe", *GROUP_SCHEMAS)  # chosen by name on the command line: loss=ipo


def register_configs() -> None:
    """Store ``run_schema`` and one ``<group>/<name>_schema`` per group option in the ConfigStore."""
    store = ConfigStore.instance()
    store.store(name="run_schema", node=RunConfig)
    for name, cls in STAGE_CONFIGS.items():
        store.store(group="stage", name=f"{name}{SCHEMA_SUFFIX}", node=cls)
    for group, cls in GROUP_SCHEMAS.items():
        store.store(group=group, name=f"{group}{SCHEMA_SUFFIX}", node=cls)


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


def group_options(group: str) -> list[str]:
    """The options of a config group: its YAML files (``configs/<group>/<name>.yaml``), not the stored schemas."""
    return sorted(path.stem for path in (CONFIG_ROOT / group).glob("*.yaml") if not path.stem.endswith(SCHEMA_SUFFIX))


def check_group_choice(group: str, value: str) -> str | None:
    """A readable problem if ``value`` (one option, or a comma-separated sweep) names no option of ``group``.

    Hydra's own message lists the ConfigStore's ``*_schema`` nodes as if they were options; this one does not.
    """
    if any(mark in value for mark in "()[]{}$") or value in ("null", ""):
        return None  # a sweep function, an interpolation or a deletion: Hydra checks it
    options = group_options(group)
    unknown = [choice for choice in value.split(",") if choice not in options]
    if not unknown:
        return None
    return f"{group}={','.join(unknown)} is not an option of {group}; options: {', '.join(options)}"


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
        key, value = item.split("=", 1)
        if "." in key or key not in OPTION_GROUPS:
            problem = check_key(key, stage)
        else:
            problem = check_group_choice(key, value)
        if problem:
            problems.append(problem)
    if problems:
        raise ConfigError(problems)
