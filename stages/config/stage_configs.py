"""The table of stage configs: one dataclass per stage (``stage=<name>``).

A stage config lists in ``SECTIONS`` the top-level sections (or dotted keys) that change its result; those,
plus its own non-runtime fields, form the semantic config that is fingerprinted.
"""

from __future__ import annotations

from stages.config.generation_configs import (
    EVALUATION_SUITES,
    CreateInstructionsConfig,
    EvaluateConfig,
    GenerateConfig,
    GenerationRuntimeFields,
    RankConfig,
    sampling_problems,
)
from stages.config.stage_base import StageConfig
from stages.config.train_configs import (
    FilterConfig,
    IterateConfig,
    JointTrainConfig,
    PrepareConfig,
    TrainRMConfig,
    TrainSettings,
)
from stages.config.verify_config import VerifyConfig

__all__ = [
    "EVALUATION_SUITES",
    "STAGE_CONFIGS",
    "CreateInstructionsConfig",
    "EvaluateConfig",
    "FilterConfig",
    "GenerateConfig",
    "GenerationRuntimeFields",
    "IterateConfig",
    "JointTrainConfig",
    "PrepareConfig",
    "RankConfig",
    "StageConfig",
    "TrainRMConfig",
    "TrainSettings",
    "VerifyConfig",
    "sampling_problems",
]


STAGE_CONFIGS: dict[str, type[StageConfig]] = {
    "prepare": PrepareConfig,
    "create_instructions": CreateInstructionsConfig,
    "generate": GenerateConfig,
    "rank": RankConfig,
    "filter": FilterConfig,
    "train_rm": TrainRMConfig,
    "joint_train": JointTrainConfig,
    "evaluate": EvaluateConfig,
    "iterate": IterateConfig,
    "verify": VerifyConfig,
}
