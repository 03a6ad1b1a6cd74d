"""Rows of ``ranked.jsonl`` (every candidate with its score) and ``pairs.jsonl`` (preference rows), and metrics.

A pair row is a preference row for the data layer (``messages`` + ``chosen`` + ``rejected``); the other fields
(``prompt``, ids, scores, ``margin``, ``ranker``) travel as metadata.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from typing import Any

from alignment.hashing import content_hash
from alignment.ranking.base import CandidateGroup, GroupScores
from alignment.ranking.pairs import SelectedPair, select_pairs


def candidate_id(prompt_id: str, text: str) -> str:
    """Stable id of one response to one prompt."""
    return content_hash({"prompt_id": prompt_id, "response": text})


def group_of(row: dict[str, Any], where: str) -> CandidateGroup:
    """The candidates of a ``responses.jsonl`` row; ``where`` (file and line) names a bad row in errors."""
    for field, kind in (("prompt_id", str), ("prompt", str), ("messages", list), ("responses", list)):
        if not isinstance(row.get(field), kind):
            raise ValueError(f"{where}: field '{field}' must be a {kind.__name__} (got {type(row.get(field)).__name__})")
    if not all(isinstance(text, str) for text in row["responses"]):
        raise ValueError(f"{where}: field 'responses' must hold strings only")
    return CandidateGroup(key=row["prompt_id"], prompt=row["prompt"], messages=tuple(row["messages"]),
                          responses=tuple(row["responses"]))


def ranked_row(row: dict[str, Any], scored: GroupScores, ranker: str) -> dict[str, Any]:
    """The ``ranked.jsonl`` row of a responses row: every candidate, its id and score, and win probabilities."""
    responses = list(row["responses"])
    return {"id": row.get("id") or content_hash({"prompt_id": row["prompt_id"], "responses": responses}),
            "prompt_id": row["prompt_id"], "prompt": row["prompt"], "messages": row["messages"],
            "responses": responses, "response_ids": [candidate_id(row["prompt_id"], t) for t in responses],
            "scores": list(scored.scores), "win_probs": scored.win_probs,
            "n_tokens": row.get("n_tokens"), "finish_reasons": row.get("finish_reasons"), "ranker": ranker}


def pair_row(ranked: dict[str, Any], pair: SelectedPair) -> dict[str, Any]:
    """The ``pairs.jsonl`` row of ``pair`` (indices into ``ranked['responses']``)."""
    chosen, rejected = ranked["responses"][pair.chosen], ranked["responses"][pair.rejected]
    return {"id": content_hash({"prompt_id": ranked["prompt_id"], "chosen": chosen, "rejected": rejected}),
            "prompt_id": ranked["prompt_id"], "chosen_id": ranked["response_ids"][pair.chosen],
            "rejected_id": ranked["response_ids"][pair.rejected], "prompt": ranked["prompt"],
            "messages": ranked["messages"], "chosen": chosen, "rejected": rejected,
            "chosen_score": ranked["scores"][pair.chosen], "rejected_score": ranked["scores"][pair.rejected],
            "margin": pair.margin, "ranker": ranked["ranker"]}


def lengths_of(ranked: dict[str, Any]) -> list[int]:
    """Response lengths in tokens when the generate stage recorded them, else in characters."""
    tokens = ranked.get("n_tokens")
    if isinstance(tokens, list) and len(tokens) == len(ranked["responses"]):
        return [int(t) for t in tokens]
    return [len(text) for text in ranked["responses"]]


def build_pairs(ranked_rows: Sequence[dict[str, Any]], rule: str, min_margin: float, alpha: float,
                seed: int) -> tuple[list[dict[str, Any]], Counter[str]]:
    """Pair rows of every ranked row under ``rule`` and the summed selection counts."""
    rows, counts = [], Counter[str]()
    for ranked in ranked_rows:
        pairs, group_counts = select_pairs(ranked["responses"], ranked["scores"], rule, min_margin,
                                           lengths_of(ranked), alpha, ranked["prompt_id"], seed)
        counts.update(group_counts)
        rows += [pair_row(ranked, pair) for pair in pairs]
    return rows, counts


def _mean(values: Sequence[float]) -> float | None:
    return round(sum(values) / len(values), 3) if values else None


def pair_metrics(ranked_rows: Sequence[dict[str, Any]], pair_rows: Sequence[dict[str, Any]],
                 counts: Counter[str]) -> dict[str, Any]:
    """Manifest metrics: pairs, tie rate, the mean score of every candidate (the policy's average reward, tracked
    round after round), chosen vs rejected lengths and scores, selection counts."""
    considered = counts.get("candidate_pairs", 0)
    scores = [float(s) for r in ranked_rows for s in r["scores"] if s is not None]
    return {"prompts": len(ranked_rows), "candidates": sum(len(r["responses"]) for r in ranked_rows),
            "mean_score": round(sum(scores) / len(scores), 4) if scores else None,
            "pairs": len(pair_rows), "tie_rate": round(counts.get("ties", 0) / considered, 4) if considered else 0.0,
            "mean_chosen_chars": _mean([len(r["chosen"]) for r in pair_rows]),
            "mean_rejected_chars": _mean([len(r["rejected"]) for r in pair_rows]),
            "mean_margin": _mean([r["margin"] for r in pair_rows]),
            "selection": {key: int(value) for key, value in sorted(counts.items())}}
