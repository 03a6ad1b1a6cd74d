"""The ``recipe`` section: which stages one round of the iterative loop runs, and each stage's settings.

A recipe (``recipe=<name>``, ``configs/recipe/<name>.yaml``) sets the shared sections (model, data, objective,
loss) at the top level and keeps what belongs to one stage under ``recipe.stage_settings.<stage>``; those are
merged into that stage's typed config whenever it runs (command-line ``stage.*`` keys still win), so a key that
the stage does not have is an error, reported before anything runs (:mod:`stages.config.recipe_settings`).
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
        if self.name and not self.stages:
            problems.append(f"recipe {self.name!r} lists no stages")
        return problems
