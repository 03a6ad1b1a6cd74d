"""The stage registry: stage name -> the module implementing it, each a :class:`~pipeline.protocol.Stage`.

Stage modules keep torch and model imports inside their functions, so importing this table (and checking a
config) never imports torch. The multi-round driver (``stage=iterate``) is not a stage: the CLI dispatches it.
"""

from __future__ import annotations

from collections.abc import Mapping

from pipeline.protocol import Stage
from stages import create_instructions, evaluate, filter, generate, joint_train, prepare, rank, train_rm

STAGES: Mapping[str, Stage] = {
    "prepare": prepare,
    "create_instructions": create_instructions,
    "generate": generate,
    "rank": rank,
    "filter": filter,
    "train_rm": train_rm,
    "joint_train": joint_train,
    "evaluate": evaluate,
}


def stage_module(name: str) -> Stage:
    """The module implementing stage ``name``."""
    if name not in STAGES:
        raise KeyError(f"unknown stage {name!r}; stages: {', '.join(STAGES)}")
    return STAGES[name]
