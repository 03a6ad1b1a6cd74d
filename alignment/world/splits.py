"""The embedded task world: deterministic splits of SFT rows, preference pairs, golden/candidate pools, prompts
and held-out evaluation tasks, all with verifiable answers (see :mod:`alignment.world.tasks`).

Every prompt appears in at most one split, and a fixed hash-defined quarter of the prompt space is reserved for
:func:`pretraining_texts`, so the base model never sees a world prompt, held-out or not.
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from alignment.hashing import row_id, sha256_text
from alignment.world.sizes import CORRUPTIONS, WorldSizes
from alignment.world.tasks import (
    FAMILIES,
    PREFERENCE_FAMILIES,
    SFT_FAMILIES,
    family_of,
    sample_prompt,
    solve,
    verify,
    wrong_answer,
)
from alignment.world.tokenizer import render_chat

__all__ = [
    "FAMILIES",
    "PREFERENCE_FAMILIES",
    "SFT_FAMILIES",
    "CORRUPTIONS",
    "SPLITS",
    "WorldSizes",
    "build_world",
    "family_of",
    "pretraining_texts",
    "solve",
    "verify",
    "world_corpus",
    "write_world",
    "wrong_answer",
]

Row = dict[str, Any]

# Allocation order matters only for which split gets a contested prompt; held-out sets go first so they stay
# the same when training-set sizes change.
SPLITS = ("eval_tasks", "golden", "sft_eval", "pref_eval", "sft_train", "pref_train", "candidates", "prompts")
_PRETRAIN_BUCKETS = 4  # prompts whose hash is 0 mod this are reserved for pretraining text
_MAX_DRAWS_PER_ROW = 1000
def reserved_for_pretraining(prompt: str) -> bool:
    """Whether ``prompt`` lies in the hash bucket kept for pretraining text (never in a world split)."""
    return int(sha256_text(prompt)[:8], 16) % _PRETRAIN_BUCKETS == 0


class _PromptAllocator:
    """Draws fresh prompts, never returning one twice and never one reserved for pretraining."""

    def __init__(self) -> None:
        self.used: set[str] = set()

    def draw(self, family: str, rng: random.Random) -> str:
        for _ in range(_MAX_DRAWS_PER_ROW):
            prompt = sample_prompt(family, rng)
            if prompt not in self.used and not reserved_for_pretraining(prompt):
                self.used.add(prompt)
                return prompt
        raise ValueError(f"prompt space of family {family!r} is exhausted after {len(self.used)} prompts; "
                         "reduce the WorldSizes row counts")


def _split_rng(seed: int, split: str) -> random.Random:
    # String seeds are hashed with sha512 by `random`, so this is stable across processes and PYTHONHASHSEED.
    return random.Random(f"world:{seed}:{split}")


def _with_id(row: Row, id_fields: tuple[str, ...] | None = None) -> Row:
    return {"id": row_id(row, id_fields), **row}


def _sft_row(prompt: str, answer: str, family: str, **extra: Any) -> Row:
    messages = [{"role": "user", "content": prompt}, {"role": "assistant", "content": answer}]
    return _with_id({"messages": messages, "family": family, **extra})


def _draw_prompts(allocator: _PromptAllocator, rng: random.Random, families: tuple[str, ...],
                  n: int) -> list[tuple[str, str]]:
    """``n`` fresh (family, prompt) pairs, families in round-robin order so every family is equally present."""
    drawn = []
    for i in range(n):
        family = families[i % len(families)]
        drawn.append((family, allocator.draw(family, rng)))
    return drawn


def _sft_split(allocator: _PromptAllocator, rng: random.Random, families: tuple[str, ...], n: int) -> list[Row]:
    return [_sft_row(p, solve(p), f) for f, p in _draw_prompts(allocator, rng, families, n)]


def _pref_split(allocator: _PromptAllocator, rng: random.Random, n: int) -> list[Row]:
    return [
        _with_id({"prompt": p, "chosen": solve(p), "rejected": wrong_answer(p, rng), "family": f})
        for f, p in _draw_prompts(allocator, rng, PREFERENCE_FAMILIES, n)
    ]


def _candidates_split(allocator: _PromptAllocator, rng: random.Random, n: int, fraction: float,
                      corruption: str) -> list[Row]:
    """``n`` chat rows, ``round(fraction·n)`` of them corrupted with ``corruption`` noise (flag ``corrupted``,
    kind ``corruption`` on the corrupted rows)."""
    drawn = _draw_prompts(allocator, rng, FAMILIES, n)
    corrupted = rng.sample(range(n), round(fraction * n))
    kinds = _corruption_kinds(corrupted, corruption, rng)
    answers = [solve(p) for _, p in drawn]
    rows = []
    for i, (family, prompt) in enumerate(drawn):
        kind = kinds.get(i)
        if kind is None:
            rows.append(_sft_row(prompt, answers[i], family, corrupted=False))
            continue
        answer = wrong_answer(prompt, rng) if kind == "near_miss" else _mismatched_answer(i, drawn, answers, rng)
        rows.append(_sft_row(prompt, answer, family, corrupted=True, corruption=kind))
    return rows


def _corruption_kinds(corrupted: list[int], corruption: str, rng: random.Random) -> dict[int, str]:
    """Row index -> noise kind of every corrupted row; ``mixed`` makes a random half of them near misses."""
    if corruption != "mixed":
        return dict.fromkeys(corrupted, corruption)
    near_misses = set(rng.sample(corrupted, len(corrupted) // 2))
    return {i: "near_miss" if i in near_misses else "mismatch" for i in corrupted}


def _mismatched_answer(index: int, drawn: list[tuple[str, str]], answers: list[str], rng: random.Random) -> str:
    """The correct answer of a random other candidate prompt whose family differs from row ``index``'s (and whose
    answer is not accidentally right for it, e.g. an arithmetic result that equals a count)."""
    family = drawn[index][0]
    donors = [j for j, (other, _) in enumerate(drawn) if other != family and answers[j] != answers[index]]
    if not donors:
        raise ValueError("mismatch corruption needs candidates of at least two families; raise WorldSizes.candidates")
    return answers[rng.choice(donors)]


def _prompts_split(allocator: _PromptAllocator, rng: random.Random, n: int) -> list[Row]:
    return [_with_id({"prompt": p, "family": f}, ("prompt",)) for f, p in _draw_prompts(allocator, rng, FAMILIES, n)]


def _eval_split(allocator: _PromptAllocator, rng: random.Random, per_family: int) -> list[Row]:
    drawn = _draw_prompts(allocator, rng, FAMILIES, per_family * len(FAMILIES))
    return [_with_id({"prompt": p, "answer": solve(p), "family": f}, ("prompt",)) for f, p in drawn]


def build_world(seed: int, sizes: WorldSizes | None = None) -> dict[str, list[Row]]:
    """Build every split of the world for ``seed``; the same seed and sizes give identical rows and ids.

    Splits: ``sft_train``/``sft_eval`` (chat rows on SFT_FAMILIES), ``pref_train``/``pref_eval`` (pairs on
    PREFERENCE_FAMILIES), ``golden`` (trusted chat rows, all families), ``candidates`` (chat rows with a
    ``corrupted`` flag, and the noise kind ``corruption`` on corrupted rows), ``prompts`` (generation pool)
    and ``eval_tasks`` (held-out prompt + answer).
    No prompt appears in two splits.
    """
    sizes = sizes or WorldSizes()
    allocator = _PromptAllocator()
    builders: dict[str, Callable[[random.Random], list[Row]]] = {
        "eval_tasks": lambda rng: _eval_split(allocator, rng, sizes.eval_per_family),
        "golden": lambda rng: _sft_split(allocator, rng, FAMILIES, sizes.golden),
        "sft_eval": lambda rng: _sft_split(allocator, rng, SFT_FAMILIES, sizes.sft_eval),
        "pref_eval": lambda rng: _pref_split(allocator, rng, sizes.pref_eval),
        "sft_train": lambda rng: _sft_split(allocator, rng, SFT_FAMILIES, sizes.sft_train),
        "pref_train": lambda rng: _pref_split(allocator, rng, sizes.pref_train),
        "candidates": lambda rng: _candidates_split(allocator, rng, sizes.candidates, sizes.corrupt_fraction,
                                                    sizes.corruption),
        "prompts": lambda rng: _prompts_split(allocator, rng, sizes.prompts),
    }
    return {split: builders[split](_split_rng(seed, split)) for split in SPLITS}


def row_prompt(row: Row) -> str:
    """The user prompt of a row of any split (chat rows: the first user message)."""
    if "prompt" in row:
        return str(row["prompt"])
    for message in row.get("messages", []):
        if message.get("role") == "user":
            return str(message["content"])
    raise ValueError(f"row {row.get('id', '?')} has neither a 'prompt' field nor a user message")


def _row_texts(row: Row) -> Iterable[str]:
    for key in ("prompt", "chosen", "rejected", "answer"):
        if key in row:
            yield str(row[key])
    for message in row.get("messages", []):
        yield str(message["content"])


def world_corpus(world: dict[str, list[Row]]) -> list[str]:
    """All text in ``world`` (prompts, answers, chosen/rejected), in split order: the tokenizer's training set."""
    return [text for split in world for row in world[split] for text in _row_texts(row)]


def pretraining_texts(seed: int, n: int, correct_fraction: float = 0.5) -> list[str]:
    """``n`` rendered chat conversations (all families) whose answer is correct with prob. ``correct_fraction``.

    Prompts come only from the reserved pretraining bucket, so they never coincide with a world split's
    prompt; a model pretrained on them learns the format and is mediocre at the tasks.
    """
    if not 0.0 <= correct_fraction <= 1.0:
        raise ValueError(f"correct_fraction={correct_fraction} must be in [0, 1]")
    rng = random.Random(f"pretrain:{seed}")
    texts: list[str] = []
    while len(texts) < n:
        family = FAMILIES[len(texts) % len(FAMILIES)]
        prompt = sample_prompt(family, rng)
        if not reserved_for_pretraining(prompt):
            continue
        answer = solve(prompt) if rng.random() < correct_fraction else wrong_answer(prompt, rng)
        texts.append(render_chat([{"role": "user", "content": prompt}, {"role": "assistant", "content": answer}]))
    return texts


def write_world(world: dict[str, list[Row]], directory: str | Path) -> dict[str, int]:
    """Write one ``<split>.jsonl`` per split into ``directory``; return the number of rows per split."""
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    counts = {}
    for split, rows in world.items():
        with open(out / f"{split}.jsonl", "w", encoding="utf-8") as handle:
            for row in rows:
                handle.write(json.dumps(row, ensure_ascii=False, sort_keys=True) + "\n")
        counts[split] = len(rows)
    return counts
