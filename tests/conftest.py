"""Shared fixtures: composing typed run configs and one small prepared world per test session."""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest

from stages.compose import compose_run

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

# A world small enough to build in seconds; models still learn on it.
SMALL_WORLD = ("world=ci",)


@pytest.fixture(scope="session")
def prepared_world(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A run directory whose ``round_00/prepare`` holds a small embedded world (built once per session)."""
    from stages.runner import run_stage

    run_dir = tmp_path_factory.mktemp("world")
    run_stage(compose_run("stage=prepare", *SMALL_WORLD, f"run_dir={run_dir}", "stage.progress=false"))
    return run_dir


@pytest.fixture
def world_run_dir(prepared_world: Path, tmp_path: Path) -> Callable[[str], Path]:
    """Factory of fresh run directories that already contain the session's prepared world."""

    def make(name: str = "run") -> Path:
        run_dir = tmp_path / name
        shutil.copytree(prepared_world / "round_00" / "prepare", run_dir / "round_00" / "prepare")
        return run_dir

    return make
