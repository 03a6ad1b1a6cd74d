"""Sampling responses for prompt rows and shaping them as ``responses.jsonl`` rows.

A row: ``{id, prompt_id, prompt, messages, responses, finish_reasons, n_tokens, backend, meta}``. ``prompt_id``
is the prompt row's id; ``id`` hashes ``prompt_id`` and the responses, so equal content gives equal ids.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from alignment.generation.base import (
    FINISH_LENGTH,
    Completion,
    GenerationBackend,
    ProgressFn,
    SamplingSettings,
    request_seed,
)
from alignment.hashing import content_hash


@dataclass(frozen=True)
class PromptItem:
    """One prompt to answer: its row id, conversation, encoded ids (chat template applied) and metadata."""

    id: str
    messages: tuple[dict[str, str], ...]
    prompt_ids: tuple[int, ...]
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def prompt(self) -> str:
        """The last user message (the instruction)."""
        return next(m["content"] for m in reversed(self.messages) if m["role"] == "user")


def response_row(item: PromptItem, completion: Completion, backend: str) -> dict[str, Any]:
    """The ``responses.jsonl`` row of ``item`` answered by ``completion``."""
    return {
        "id": content_hash({"prompt_id": item.id, "responses": completion.texts}),
        "prompt_id": item.id,
        "prompt": item.prompt,
        "messages": [dict(m) for m in item.messages],
        "responses": list(completion.texts),
        "finish_reasons": list(completion.finish_reasons),
        "n_tokens": list(completion.n_tokens),
        "backend": backend,
        "meta": dict(item.meta),
    }


def generate_rows(backend: GenerationBackend, items: Sequence[PromptItem], settings: SamplingSettings,
                  on_done: ProgressFn | None = None) -> list[dict[str, Any]]:
    """Response rows for ``items``; each prompt is sampled with a seed derived from ``settings.seed`` and its id.
    ``on_done(k)``: called as ``k`` more prompts are answered (see ``GenerationBackend.generate``)."""
    if not items:
        return []
    seeds = [request_seed(settings.seed, item.id) for item in items]
    completions = backend.generate([item.prompt_ids for item in items], settings, seeds, on_done)
    return [response_row(item, completion, backend.name) for item, completion in zip(items, completions, strict=True)]


def summarize_rows(rows: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Counts for the manifest: prompts, responses, empty and truncated responses, generated tokens."""
    texts = [text for row in rows for text in row["responses"]]
    reasons = [reason for row in rows for reason in row["finish_reasons"]]
    tokens = [count for row in rows for count in row["n_tokens"]]
    return {
        "prompts": len(rows),
        "responses": len(texts),
        "empty_responses": sum(1 for text in texts if not text.strip()),
        "truncated_responses": sum(1 for reason in reasons if reason == FINISH_LENGTH),
        "generated_tokens": sum(tokens),
        "mean_response_tokens": round(sum(tokens) / len(tokens), 3) if tokens else 0.0,
        "backends": sorted({str(row["backend"]) for row in rows}),
    }
