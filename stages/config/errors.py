"""Configuration errors that report every problem at once."""

from __future__ import annotations


class ConfigError(ValueError):
    """Raised by ``validate()`` with the full list of problems, before any model is loaded."""

    def __init__(self, problems: list[str]):
        self.problems = problems
        lines = "\n".join(f"  - {p}" for p in problems)
        super().__init__(f"invalid configuration ({len(problems)} problem(s)):\n{lines}")


def runtime(default: object = None, **kwargs: object):
    """A dataclass field excluded from the stage fingerprint (devices, logging, workers...)."""
    from dataclasses import field

    metadata = {"runtime": True}
    if "default_factory" in kwargs:
        return field(default_factory=kwargs["default_factory"], metadata=metadata)  # type: ignore[arg-type]
    return field(default=default, metadata=metadata)
