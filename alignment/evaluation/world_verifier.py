"""Verifier accuracy per task family from already generated answers (the world's held-out prompts)."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from typing import Any

from alignment.data.world_tasks import verify
from alignment.evaluation.stats import DEFAULT_RESAMPLES, estimate


def verifier_scores(tasks: Sequence[dict[str, Any]], answers: Sequence[str], resamples: int = DEFAULT_RESAMPLES,
                    seed: int = 0) -> dict[str, Any]:
    """``accuracy`` over all tasks and ``families.<family>`` accuracies, each with a bootstrap CI.

    ``tasks``: rows with ``prompt`` and ``family``; ``answers``: one model answer per task.
    """
    per_family: dict[str, list[float]] = defaultdict(list)
    every: list[float] = []
    for task, answer in zip(tasks, answers, strict=True):
        score = float(verify(task["prompt"], answer))
        per_family[task["family"]].append(score)
        every.append(score)
    if not every:
        raise ValueError("no verifier tasks to score")
    return {"accuracy": estimate(every, resamples, seed).to_dict(),
            "families": {name: estimate(v, resamples, seed).to_dict() for name, v in sorted(per_family.items())}}
