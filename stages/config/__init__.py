"""Typed configuration: one dataclass per config node, registered in Hydra's ConfigStore.

``sections`` holds the shared groups (model, data, objective, loss, world, tracking), ``stage_configs`` one
dataclass per stage, ``store`` the ConfigStore registration and override checking.
"""

from stages.config.errors import ConfigError
from stages.config.sections import (
    DataConfig,
    DatasetSpec,
    LoraSettings,
    LossConfig,
    ModelConfig,
    ObjectiveConfig,
    TrackingConfig,
    WorldConfig,
)
from stages.config.stage_configs import STAGE_CONFIGS, RunConfig, StageConfig

__all__ = [
    "STAGE_CONFIGS",
    "ConfigError",
    "DataConfig",
    "DatasetSpec",
    "LoraSettings",
    "LossConfig",
    "ModelConfig",
    "ObjectiveConfig",
    "RunConfig",
    "StageConfig",
    "TrackingConfig",
    "WorldConfig",
]
