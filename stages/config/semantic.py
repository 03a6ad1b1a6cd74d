"""The semantic part of a run config: what changes a stage's result, and so its fingerprint."""

from __future__ import annotations

import dataclasses
from typing import Any

from stages.config.run_config import RunConfig


def strip_runtime(node: Any) -> Any:
    """Plain data of ``node`` without fields marked ``runtime`` (recursively through dataclasses)."""
    if dataclasses.is_dataclass(node) and not isinstance(node, type):
        return {
            f.name: strip_runtime(getattr(node, f.name))
            for f in dataclasses.fields(node)
            if not f.metadata.get("runtime")
        }
    if isinstance(node, (list, tuple)):
        return [strip_runtime(item) for item in node]
    if isinstance(node, dict):
        return {key: strip_runtime(value) for key, value in node.items()}
    return node


def _lookup(run: RunConfig, dotted: str) -> Any:
    node: Any = run
    for part in dotted.split("."):
        node = getattr(node, part)
    return node


def semantic_config(run: RunConfig) -> dict[str, Any]:
    """``{"stage": <stage fields>, <section>: ...}`` for the sections the stage declares in ``SECTIONS``."""
    semantic: dict[str, Any] = {"stage": strip_runtime(run.stage)}
    for dotted in run.stage.SECTIONS:
        semantic[dotted] = strip_runtime(_lookup(run, dotted))
    return semantic
