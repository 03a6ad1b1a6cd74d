"""Every problem of a run config at once, before any model loads: the run's own ``validate()`` (the chosen stage
and the sections it reads) plus the recipe's per-stage settings checked against each stage's schema."""

from __future__ import annotations

from stages.config.errors import ConfigError
from stages.config.recipe_settings import recipe_problems
from stages.config.run_config import RunConfig


def validate_run(run: RunConfig) -> list[str]:
    """Every problem of ``run`` (empty when valid)."""
    return run.validate() + recipe_problems(run.recipe)


def validate_or_raise(run: RunConfig) -> None:
    """Raise one :class:`ConfigError` listing every problem of ``run``."""
    problems = validate_run(run)
    if problems:
        raise ConfigError(problems)
