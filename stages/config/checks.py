"""Bounds checks shared by the config sections and the stage configs; each appends readable problems.

Comparisons with NaN are always false, so a bound alone lets ``lr=nan`` through: :func:`non_finite_problems`
reports every NaN or infinite number of a config node, and the bound checks then only see finite values.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any


def at_least(problems: list[str], prefix: str, owner: Any, keys: tuple[str, ...], minimum: float,
             allow_none: bool = False) -> None:
    """``<prefix>.<key> must be >= minimum`` for each of ``keys`` of ``owner`` below ``minimum``."""
    for key in keys:
        value = getattr(owner, key)
        if value is None and allow_none:
            continue
        if value < minimum:
            problems.append(f"{prefix}.{key} must be >= {minimum}{' or null' if allow_none else ''} (got {value})")


def above(problems: list[str], prefix: str, owner: Any, keys: tuple[str, ...], bound: float = 0,
          allow_none: bool = False) -> None:
    """``<prefix>.<key> must be > bound`` for each of ``keys`` of ``owner`` at or below ``bound``."""
    for key in keys:
        value = getattr(owner, key)
        if value is None and allow_none:
            continue
        if value <= bound:
            problems.append(f"{prefix}.{key} must be > {bound}{' or null' if allow_none else ''} (got {value})")


def non_finite_problems(node: Any, prefix: str) -> list[str]:
    """``<key> must be a finite number`` for every NaN or infinite float of ``node`` (a dataclass instance, a list
    or a number), recursing into nested dataclasses and lists."""
    if isinstance(node, float):
        return [] if math.isfinite(node) else [f"{prefix} must be a finite number (got {node})"]
    if isinstance(node, (list, tuple)):
        return [p for index, item in enumerate(node) for p in non_finite_problems(item, f"{prefix}[{index}]")]
    if dataclasses.is_dataclass(node) and not isinstance(node, type):
        return [p for f in dataclasses.fields(node)
                for p in non_finite_problems(getattr(node, f.name), f"{prefix}.{f.name}")]
    return []
