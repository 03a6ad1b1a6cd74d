"""The embedded world's split sizes and candidate noise (no heavy imports: the ``world`` config validates with
these bounds)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any

# Kinds of noise in the candidate pool: ``near_miss`` (a plausible wrong answer to the row's own prompt, see
# ``wrong_answer``), ``mismatch`` (the correct answer of another candidate prompt of a different family: a
# response that belongs to another prompt, the typical noise of scraped instruction data) or ``mixed`` (half
# of the corrupted rows of each kind).
CORRUPTIONS = ("near_miss", "mismatch", "mixed")


@dataclass(frozen=True)
class WorldSizes:
    """Row counts per split (``eval_per_family`` is per family), the corrupted share of ``candidates`` and the
    kind of corruption (one of :data:`CORRUPTIONS`).

    The default ``mismatch`` is the noise a data filter is meant to remove from scraped data, and one the
    world's ~3M-parameter base model (about 25% accurate on the tasks) can detect. ``near_miss`` rows differ
    from the truth by one token or one order, which that model cannot tell from clean rows, so a filter
    validated on them measures the model, not the filter. One default filter pass on world=default (seed 0):
    AUROC 0.995 on mismatch, 0.58 on near_miss, 0.76 on mixed (0.99 on its mismatches, 0.52 on its near misses).
    """

    sft_train: int = 1500
    sft_eval: int = 150
    pref_train: int = 1500
    pref_eval: int = 150
    golden: int = 100
    candidates: int = 600
    prompts: int = 500
    eval_per_family: int = 60
    corrupt_fraction: float = 0.3
    corruption: str = "mismatch"

    def __post_init__(self) -> None:
        problems = size_problems({f.name: getattr(self, f.name) for f in fields(self)})
        if problems:
            raise ValueError("invalid WorldSizes: " + "; ".join(problems))


def size_problems(values: Mapping[str, Any]) -> list[str]:
    """Every invalid :class:`WorldSizes` field in ``values`` (the one definition of the bounds, also reported by
    the ``world`` config before anything runs)."""
    counts = [f.name for f in fields(WorldSizes) if f.name not in ("corrupt_fraction", "corruption")]
    problems = [f"{name}={values[name]} must be >= 0" for name in counts if values[name] < 0]
    if not 0.0 <= values["corrupt_fraction"] <= 1.0:
        problems.append(f"corrupt_fraction={values['corrupt_fraction']} must be in [0, 1]")
    if values["corruption"] not in CORRUPTIONS:
        problems.append(f"corruption={values['corruption']!r} is not one of {list(CORRUPTIONS)}")
    return problems
