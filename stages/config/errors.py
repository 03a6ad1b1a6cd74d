"""Configuration errors that report every problem at once."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import field
from typing import Any


class ConfigError(ValueError):
    """Raised by ``validate()`` with the full list of problems, before any model is loaded."""

    def __init__(self, problems: list[str]):
        self.problems = problems
        lines = "\n".join(f"  - {p}" for p in problems)
        super().__init__(f"invalid configuration ({len(problems)} problem(s)):\n{lines}")


def runtime(default: Any = None, default_factory: Callable[[], Any] | None = None) -> Any:
    """A dataclass field excluded from the stage fingerprint (devices, logging, workers...)."""
    metadata = {"runtime": True}
    if default_factory is not None:
        return field(default_factory=default_factory, metadata=metadata)
    return field(default=default, metadata=metadata)
