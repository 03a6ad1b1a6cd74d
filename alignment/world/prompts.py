"""Fresh task prompts for the embedded world: the world's own generator plays the instruction creator.

Prompts are drawn family by family (round-robin) with ``world_tasks.sample_prompt`` from an RNG seeded by
``(seed, round)``, skipping any prompt already in a world split, reserved for pretraining text, or drawn before.
"""

from __future__ import annotations

import random
from collections.abc import Iterable, Sequence

from alignment.world.splits import reserved_for_pretraining
from alignment.world.tasks import FAMILIES, sample_prompt

MAX_DRAWS_PER_PROMPT = 1000


def fresh_world_prompts(n: int, seed: int, round_index: int, exclude: Iterable[str],
                        families: Sequence[str] = FAMILIES) -> list[tuple[str, str]]:
    """``n`` new ``(family, prompt)`` pairs, none in ``exclude``; the same arguments give the same list."""
    if n < 0:
        raise ValueError(f"n must be >= 0 (got {n})")
    if not families:
        raise ValueError("families must name at least one task family")
    rng = random.Random(f"instructions:{seed}:{round_index}")
    used = set(exclude)
    drawn: list[tuple[str, str]] = []
    for i in range(n):
        family = families[i % len(families)]
        drawn.append((family, _draw(family, rng, used)))
    return drawn


def _draw(family: str, rng: random.Random, used: set[str]) -> str:
    for _ in range(MAX_DRAWS_PER_PROMPT):
        prompt = sample_prompt(family, rng)
        if prompt not in used and not reserved_for_pretraining(prompt):
            used.add(prompt)
            return prompt
    raise ValueError(f"no fresh prompt of family {family!r} after {MAX_DRAWS_PER_PROMPT} draws "
                     f"({len(used)} prompts excluded); ask for fewer instructions")
