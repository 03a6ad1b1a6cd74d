"""The ranker interface: score every candidate response to a prompt, optionally with pairwise win probabilities.

A ranker receives :class:`CandidateGroup` s (one prompt and its ``n`` responses) and returns one
:class:`GroupScores` per group. A score is ``None`` when the ranker could not score that candidate (e.g. a judge
whose output had no parseable score); such candidates are never paired. Counters (truncations, unparseable
judgements) accumulate on the ranker and are reported with :meth:`Ranker.counters`.
"""

from __future__ import annotations

import abc
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

RankerT = TypeVar("RankerT", bound="Ranker")


@dataclass(frozen=True)
class CandidateGroup:
    """One prompt and its candidate responses; ``key`` (the prompt id) seeds any shuffling."""

    key: str
    prompt: str
    messages: tuple[dict[str, str], ...]
    responses: tuple[str, ...]


@dataclass
class GroupScores:
    """Per-candidate scores (``None``: unscorable) and, for pairwise rankers, ``win_probs[i][j]`` = P(i beats j)."""

    scores: list[float | None]
    win_probs: list[list[float]] | None = None
    details: dict[str, Any] = field(default_factory=dict)


class Ranker(abc.ABC):
    """Scores candidate groups; subclasses implement :meth:`score_groups`."""

    name: str = "?"
    # True when a response's score depends on nothing but the prompt and that response (a deterministic
    # pointwise scorer): the order the candidates are presented in cannot change a comparison
    order_invariant: bool = False

    def __init__(self) -> None:
        self.counts: Counter[str] = Counter()

    @abc.abstractmethod
    def score_groups(self, groups: Sequence[CandidateGroup]) -> list[GroupScores]:
        """One :class:`GroupScores` per group, same order, one score per response."""

    def counters(self) -> dict[str, int]:
        """Accumulated counts (truncations, unparseable outputs, comparisons ...) for the manifest."""
        return dict(sorted(self.counts.items()))

    def describe(self) -> dict[str, Any]:
        """What was loaded and how (for manifests)."""
        return {"ranker": self.name}

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release models."""

    def __enter__(self: RankerT) -> RankerT:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def scores_from_win_probs(win_probs: Sequence[Sequence[float]]) -> list[float | None]:
    """Each candidate's mean probability of beating the others (Borda-style); a lone candidate scores 0.5.

    ``win_probs``: ``[n, n]`` nested lists with ``win_probs[i][j]`` = P(i beats j) (the diagonal is ignored).
    """
    n = len(win_probs)
    if n == 1:
        return [0.5]
    return [sum(win_probs[i][j] for j in range(n) if j != i) / (n - 1) for i in range(n)]
