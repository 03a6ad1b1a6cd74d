"""The layers import one way: entry points and drivers -> stage modules (leaves) -> builders, the pipeline
contract and the library. Checked on the source (every import statement, module level or inside a function)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from pipeline.layout import STAGE_OUTPUT, Files
from stages.registry import STAGES

ROOT = Path(__file__).resolve().parent.parent
DRIVERS = {"stages.cli", "stages.runner", "stages.iterate", "stages.verify", "stages.compose", "stages.registry"}


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules(package: str) -> dict[str, Path]:
    return {module_name(p): p for p in sorted((ROOT / package).rglob("*.py"))}


def imports_of(path: Path) -> set[str]:
    """Every module an import statement of ``path`` names (``from a.b import c`` -> ``a.b`` and ``a.b.c``)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
    return found


def test_the_library_imports_neither_pipeline_nor_stages() -> None:
    for name, path in modules("alignment").items():
        bad = {i for i in imports_of(path) if i.split(".")[0] in ("pipeline", "stages")}
        assert not bad, f"{name} imports {sorted(bad)}"


def test_the_pipeline_contract_imports_no_torch_and_no_stage() -> None:
    for name, path in modules("pipeline").items():
        bad = {i for i in imports_of(path) if i.split(".")[0] in ("torch", "stages", "transformers")}
        assert not bad, f"{name} imports {sorted(bad)}"


@pytest.mark.parametrize("stage", sorted(STAGES))
def test_a_stage_module_imports_no_other_stage_module_nor_a_driver(stage: str) -> None:
    forbidden = {f"stages.{other}" for other in STAGES if other != stage} | DRIVERS
    bad = {i for i in imports_of(ROOT / "stages" / f"{stage}.py") if i in forbidden}
    assert not bad, f"stages.{stage} imports {sorted(bad)}"


def test_builders_and_configs_import_no_stage_module_nor_a_driver() -> None:
    forbidden = {f"stages.{stage}" for stage in STAGES} | DRIVERS
    for package in ("stages/builders", "stages/config"):
        for name, path in modules(package).items():
            bad = {i for i in imports_of(path) if i in forbidden}
            assert not bad, f"{name} imports {sorted(bad)}"


def test_the_config_modules_form_no_import_cycle() -> None:
    config = modules("stages/config")
    graph = {name: {i for i in imports_of(path) if i in config and i != name} for name, path in config.items()}

    def reaches(start: str, target: str, seen: set[str]) -> bool:
        return any(nxt == target or reaches(nxt, target, seen | {nxt}) for nxt in graph[start] - seen)

    cycles = [name for name in graph if reaches(name, name, set())]
    assert not cycles, f"import cycles through {cycles}"


def test_no_stage_or_builder_spells_a_layout_name() -> None:
    """File and directory names of a run come from pipeline.layout; a stage module spelling one would drift."""
    names = {value for key, value in vars(Files).items() if key.isupper()} | set(STAGE_OUTPUT.values())
    # plain words that are also config values or metric keys ("model", "world", "shards") are not checked
    names = {n for n in names if "." in n} | {Files.CHECKPOINTS, Files.MERGED, "round_"}
    for package in ("stages",):
        for name, path in modules(package).items():
            if name.startswith("stages.config"):
                continue
            literals = {node.value for node in ast.walk(ast.parse(path.read_text()))
                        if isinstance(node, ast.Constant) and isinstance(node.value, str)}
            assert not (literals & names), f"{name} spells {sorted(literals & names)}"
