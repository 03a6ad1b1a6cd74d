"""The top-level :class:`RunConfig`: the chosen stage's config plus the shared sections.

``stage`` holds one of the stage configs of :mod:`stages.config.stage_configs`; this module does not import
them (they import it for typing), so the config modules form no cycle.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from omegaconf import MISSING

from stages.config.recipe import RecipeConfig
from stages.config.sections import (
    DataConfig,
    LossConfig,
    ModelConfig,
    ObjectiveConfig,
    TrackingConfig,
    WorldConfig,
)


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
    # caches content-keyed by what they hold (reference log-probs, evaluation generations), so runs may share
    # one: e.g. every run of a sweep; empty: {run_dir}/cache
    cache_dir: str = ""
    round: int = 0
    rounds: int = 1  # stage=iterate: how many rounds to run (rounds 0 .. rounds-1)
    seed: int = 0
    force: bool = False
    dry_run: bool = False

    def validate(self) -> list[str]:
        """Every problem of the chosen stage and the sections it reads (recipe settings are checked against
        the stage schemas by :func:`stages.config.recipe_settings.recipe_problems`)."""
        problems: list[str] = []
        if self.round < 0:
            problems.append(f"round must be >= 0 (got {self.round})")
        if self.rounds < 1:
            problems.append(f"rounds must be >= 1 (got {self.rounds})")
        if not self.run_dir:
            problems.append("run_dir is empty")
        return problems + self.stage.validate(self) + self.tracking.validate() + self.recipe.validate()
