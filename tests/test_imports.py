"""Every module of the ``alignment``, ``pipeline`` and ``stages`` packages imports, so a broken import fails CI.

Stage modules are otherwise imported lazily (only when their stage runs), so nothing else would notice.
"""

from __future__ import annotations

import importlib
import pkgutil

import pytest

import alignment
import pipeline
import stages

PACKAGES = (alignment, pipeline, stages)


def all_module_names() -> list[str]:
    names: list[str] = []
    for package in PACKAGES:
        names.append(package.__name__)
        # a subpackage that fails to import is kept in the list, so its test shows the real error
        walked = pkgutil.walk_packages(package.__path__, prefix=package.__name__ + ".", onerror=names.append)
        names += [info.name for info in walked]
    return sorted(set(names))


def test_walk_finds_the_known_modules() -> None:
    names = all_module_names()
    for expected in ("pipeline.artifacts", "pipeline.stage_run", "stages.cli", "stages.config.store",
                     "stages.prepare", "stages.runner"):
        assert expected in names


@pytest.mark.parametrize("name", all_module_names())
def test_module_imports(name: str) -> None:
    module = importlib.import_module(name)
    assert module.__name__ == name
