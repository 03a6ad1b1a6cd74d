"""``ranker=verifier``: the embedded world's exact verifier (1.0 correct, 0.0 wrong)."""

from __future__ import annotations

from collections.abc import Sequence

from alignment.ranking.base import CandidateGroup, GroupScores, Ranker
from alignment.world.tasks import verify


class VerifierRanker(Ranker):
    """Exact scores for world prompts; a prompt outside the world raises ``ValueError`` naming it."""

    name = "verifier"

    def score_groups(self, groups: Sequence[CandidateGroup]) -> list[GroupScores]:
        out = []
        for group in groups:
            try:
                scores: list[float | None] = [verify(group.prompt, r) for r in group.responses]
            except ValueError as error:
                raise ValueError(f"prompt {group.key}: the verifier ranker needs embedded-world prompts "
                                 f"({error})") from error
            self.counts["scored"] += len(scores)
            out.append(GroupScores(scores=scores))
        return out
