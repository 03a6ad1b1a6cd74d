"""One config dataclass per stage (``stage=<name>``) and the top-level :class:`RunConfig`.

A stage config lists in ``SECTIONS`` the top-level sections (or dotted keys) that change its result; those,
plus its own non-runtime fields, form the semantic config that is fingerprinted.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from omegaconf import MISSING

from stages.config.generation_configs import (
    EVALUATION_SUITES,
    CreateInstructionsConfig,
    EvaluateConfig,
    GenerateConfig,
    GenerationRuntimeFields,
    RankConfig,
    sampling_problems,
)
from stages.config.recipe import RecipeConfig
from stages.config.sections import (
    DataConfig,
    LossConfig,
    ModelConfig,
    ObjectiveConfig,
    TrackingConfig,
    WorldConfig,
)
from stages.config.stage_base import StageConfig
from stages.config.train_configs import (
    FilterConfig,
    IterateConfig,
    JointTrainConfig,
    PrepareConfig,
    TrainSettings,
)

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
    "RunConfig",
    "StageConfig",
    "TrainSettings",
    "sampling_problems",
]


STAGE_CONFIGS: dict[str, type[StageConfig]] = {
    "prepare": PrepareConfig,
    "create_instructions": CreateInstructionsConfig,
    "generate": GenerateConfig,
    "rank": RankConfig,
    "filter": FilterConfig,
    "joint_train": JointTrainConfig,
    "evaluate": EvaluateConfig,
    "iterate": IterateConfig,
}


@dataclass
class RunConfig:
    """The whole resolved configuration of one ``alignment_run`` invocation."""

    stage: Any = MISSING
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    objective: ObjectiveConfig = field(default_factory=ObjectiveConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    world: WorldConfig = field(default_factory=WorldConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    recipe: RecipeConfig = field(default_factory=RecipeConfig)
    run_dir: str = "runs/default"
    world_dir: str = ""  # run directory holding the embedded world (round_00/prepare); empty: run_dir itself
    round: int = 0
    rounds: int = 1  # stage=iterate: how many rounds to run (rounds 0 .. rounds-1)
    seed: int = 0
    force: bool = False
    dry_run: bool = False

    def validate(self) -> list[str]:
        """Every problem of the chosen stage and the sections it reads."""
        problems: list[str] = []
        if self.round < 0:
            problems.append(f"round must be >= 0 (got {self.round})")
        if self.rounds < 1:
            problems.append(f"rounds must be >= 1 (got {self.rounds})")
        if not self.run_dir:
            problems.append("run_dir is empty")
        return problems + self.stage.validate(self) + self.tracking.validate() + self.recipe.validate()
