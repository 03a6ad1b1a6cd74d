"""A candidate pool of real SFT rows with known noise, to measure a data filter where users would use it.

A fraction of the rows is corrupted the ways scraped or merged instruction data goes wrong; each row gets a label
(``clean`` or its noise kind) that is kept beside the pool, never in it, so a selector cannot read it:

* ``swapped``: the answer belongs to another row of the pool (answers rotated among the swapped rows);
* ``truncated``: the answer is cut mid-sentence, between 30% and 70% of its words;
* ``same_topic``: the answer of a different instruction that shares the most words with this one (from the
  ``donors``, rows outside the pool), a near miss a filter must read closely to catch;
* ``near_duplicate``: a copy of another clean row of the pool, its instruction changed by one small edit.

Rows are Alpaca-format dicts (``instruction``, ``input``, ``output``).
"""

from __future__ import annotations

import random
import re
from collections.abc import Sequence
from typing import Any

Row = dict[str, Any]
NOISE_KINDS = ("swapped", "truncated", "same_topic", "near_duplicate")
CLEAN = "clean"
MIN_TRUNCATABLE_WORDS = 12
_STOPWORDS = frozenset(["a", "an", "and", "are", "as", "at", "be", "by", "for", "from", "how", "i", "in", "is", "it", "of", "on", "or", "the", "this", "to", "what", "with", "you", "your", "that", "which", "can", "do", "does", "me", "my", "give", "write"])


def content_words(text: str) -> frozenset[str]:
    """Lower-cased words of ``text`` without common function words."""
    return frozenset(w for w in re.findall(r"[a-z0-9']+", text.lower()) if w not in _STOPWORDS)


def truncate_mid_sentence(text: str, rng: random.Random) -> str:
    """The first 30–70% of ``text``'s words, without a closing punctuation mark."""
    words = text.split()
    cut = rng.randint(max(3, int(0.3 * len(words))), max(3, int(0.7 * len(words))))
    return " ".join(words[:cut]).rstrip(".!?;:,")


def small_edit(instruction: str, rng: random.Random) -> str:
    """One small change that keeps the meaning: a trailing period toggled, a polite prefix, or two adjacent words
    swapped."""
    choice = rng.randrange(3)
    if choice == 0:
        return instruction[:-1] if instruction.endswith(".") else instruction + "."
    if choice == 1:
        return "Please " + instruction[:1].lower() + instruction[1:]
    words = instruction.split()
    if len(words) < 3:
        return instruction + "."
    i = rng.randrange(1, len(words) - 1)
    words[i], words[i + 1] = words[i + 1], words[i]
    return " ".join(words)


def nearest_by_topic(row: Row, donors: Sequence[Row], donor_words: Sequence[frozenset[str]]) -> Row:
    """The donor whose instruction shares the largest fraction of content words (Jaccard) with ``row``'s."""
    words = content_words(row["instruction"])
    best, best_score = donors[0], -1.0
    for donor, other in zip(donors, donor_words, strict=True):
        if donor["instruction"] == row["instruction"] or donor["output"] == row["output"]:
            continue
        score = len(words & other) / max(1, len(words | other))
        if score > best_score:
            best, best_score = donor, score
    return best


def corrupt_pool(rows: Sequence[Row], donors: Sequence[Row], fraction: float, seed: int,
                 kinds: Sequence[str] = NOISE_KINDS) -> tuple[list[Row], list[str]]:
    """``rows`` with ``fraction`` of them corrupted (split evenly over ``kinds``); returns the rows, in the same
    order, and one label per row (``clean`` or the noise kind)."""
    if not 0.0 <= fraction < 1.0:
        raise ValueError(f"fraction must be in [0, 1) (got {fraction})")
    unknown = set(kinds) - set(NOISE_KINDS)
    if unknown:
        raise ValueError(f"unknown noise kinds {sorted(unknown)}; choose from {list(NOISE_KINDS)}")
    rng = random.Random(seed)
    out = [dict(row) for row in rows]
    labels = [CLEAN] * len(out)
    per_kind = round(fraction * len(out)) // max(1, len(kinds))
    free = list(range(len(out)))
    rng.shuffle(free)
    chosen: dict[str, list[int]] = {}
    for kind in kinds:
        eligible = [i for i in free if kind != "truncated" or len(out[i]["output"].split()) >= MIN_TRUNCATABLE_WORDS]
        chosen[kind] = eligible[:per_kind]
        free = [i for i in free if i not in set(chosen[kind])]
    clean = free  # rows left untouched: near duplicates copy these
    for kind, indices in chosen.items():
        for i in indices:
            labels[i] = kind
        _apply(kind, indices, out, rows, clean, donors, rng)
    return out, labels


def _apply(kind: str, indices: list[int], out: list[Row], rows: Sequence[Row], clean: list[int],
           donors: Sequence[Row], rng: random.Random) -> None:
    if kind == "swapped":
        for i, j in zip(indices, indices[1:] + indices[:1], strict=True):  # a rotation: nobody keeps its answer
            out[i]["output"] = rows[j]["output"]
    elif kind == "truncated":
        for i in indices:
            out[i]["output"] = truncate_mid_sentence(rows[i]["output"], rng)
    elif kind == "same_topic":
        donor_words = [content_words(d["instruction"]) for d in donors]
        for i in indices:
            out[i]["output"] = nearest_by_topic(rows[i], donors, donor_words)["output"]
    else:
        for i in indices:
            source = rows[rng.choice(clean)]
            out[i] = {**source, "instruction": small_edit(source["instruction"], rng)}
