"""Verifier accuracy of a model on the embedded world's held-out prompts, per task family."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from typing import Any

from alignment.data.world_tasks import PREFERENCE_FAMILIES, SFT_FAMILIES, verify
from alignment.generation.base import GenerationBackend, SamplingSettings, chat_prompt_ids

GREEDY = SamplingSettings(n=1, temperature=0.0, max_new_tokens=24)


def verifier_accuracy(backend: GenerationBackend, tokenizer: Any, tasks: Sequence[dict[str, Any]],
                      settings: SamplingSettings = GREEDY) -> dict[str, float]:
    """Greedy answers to ``tasks`` (rows with ``prompt`` and ``family``) scored by the world's verifier.

    Returns ``verifier/<family>`` accuracies, their means over the SFT and preference families
    (``verifier/sft_families``, ``verifier/pref_families``) and over all tasks (``verifier/all``).
    """
    prompts = [chat_prompt_ids(tokenizer, [{"role": "user", "content": row["prompt"]}]) for row in tasks]
    completions = backend.generate(prompts, settings)
    scores: dict[str, list[float]] = defaultdict(list)
    for row, completion in zip(tasks, completions, strict=True):
        scores[row["family"]].append(verify(row["prompt"], completion.texts[0]))
    report = {f"verifier/{family}": sum(v) / len(v) for family, v in sorted(scores.items())}
    for group, families in (("sft_families", SFT_FAMILIES), ("pref_families", PREFERENCE_FAMILIES)):
        values = [report[f"verifier/{f}"] for f in families if f"verifier/{f}" in report]
        if values:
            report[f"verifier/{group}"] = sum(values) / len(values)
    every = [score for values in scores.values() for score in values]
    report["verifier/all"] = sum(every) / max(1, len(every))
    return report
