"""Verifier accuracy of a model on the embedded world's held-out prompts, per task family: one scoring function
(:func:`verifier_scores`) for the evaluate stage's report and for training's before/after numbers."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from typing import Any

from alignment.evaluation.stats import DEFAULT_RESAMPLES, estimate
from alignment.generation.base import GenerationBackend, SamplingSettings, chat_prompt_ids
from alignment.world.tasks import PREFERENCE_FAMILIES, SFT_FAMILIES, verify

GREEDY = SamplingSettings(n=1, temperature=0.0, max_new_tokens=24)
FAMILY_GROUPS = {"sft_families": SFT_FAMILIES, "pref_families": PREFERENCE_FAMILIES}


def verifier_scores(tasks: Sequence[dict[str, Any]], answers: Sequence[str], resamples: int = DEFAULT_RESAMPLES,
                    seed: int = 0) -> dict[str, Any]:
    """``accuracy`` over all tasks and ``families.<family>`` accuracies, each with a bootstrap CI, plus the mean
    family accuracy of the SFT and of the preference families (``groups``).

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
    families = {name: estimate(v, resamples, seed).to_dict() for name, v in sorted(per_family.items())}
    groups = {}
    for group, members in FAMILY_GROUPS.items():
        values = [families[f]["value"] for f in members if f in families]
        if values:
            groups[group] = sum(values) / len(values)
    return {"accuracy": estimate(every, resamples, seed).to_dict(), "families": families, "groups": groups}


def flat_accuracies(scores: dict[str, Any], prefix: str = "verifier") -> dict[str, float]:
    """``scores`` as manifest numbers: ``<prefix>/<family>``, ``<prefix>/sft_families``,
    ``<prefix>/pref_families`` and ``<prefix>/all``."""
    flat = {f"{prefix}/{family}": value["value"] for family, value in scores["families"].items()}
    flat.update({f"{prefix}/{group}": value for group, value in scores["groups"].items()})
    flat[f"{prefix}/all"] = scores["accuracy"]["value"]
    return flat


def greedy_answers(backend: GenerationBackend, tokenizer: Any, tasks: Sequence[dict[str, Any]],
                   settings: SamplingSettings = GREEDY) -> list[str]:
    """One answer per task (rows with ``prompt``), greedy by default."""
    prompts = [chat_prompt_ids(tokenizer, [{"role": "user", "content": row["prompt"]}]) for row in tasks]
    return [completion.texts[0] for completion in backend.generate(prompts, settings)]


def verifier_accuracy(backend: GenerationBackend, tokenizer: Any, tasks: Sequence[dict[str, Any]],
                      settings: SamplingSettings = GREEDY) -> dict[str, float]:
    """Greedy answers to ``tasks`` scored by :func:`verifier_scores`, as :func:`flat_accuracies`."""
    return flat_accuracies(verifier_scores(tasks, greedy_answers(backend, tokenizer, tasks, settings)))
