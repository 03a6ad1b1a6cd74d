"""The base of every stage config: ``SECTIONS`` lists what is fingerprinted besides the stage's own fields."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar

from omegaconf import MISSING

from stages.config.checks import at_least, non_finite_problems
from stages.config.errors import runtime

if TYPE_CHECKING:
    from stages.config.run_config import RunConfig


@dataclass
class StageConfig:
    """Base of every stage config."""

    SECTIONS: ClassVar[tuple[str, ...]] = ()
    name: str = MISSING
    log_every: int = runtime(10)
    progress: bool = runtime(True)

    def validate(self, run: RunConfig) -> list[str]:
        """Problems of this stage's own fields and of the sections it reads."""
        problems = non_finite_problems(self, "stage")
        at_least(problems, "stage", self, ("log_every",), 1)
        for section in {s.split(".")[0] for s in self.SECTIONS}:
            validate = getattr(getattr(run, section, None), "validate", None)
            if validate is not None:
                problems += validate()
        return problems
