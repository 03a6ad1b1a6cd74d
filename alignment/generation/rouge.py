"""ROUGE-L near-duplicate detection for instruction pools (self-instruct keeps a new instruction only when its
ROUGE-L F1 with every pooled instruction is below 0.7).

ROUGE-L F1 of token sequences ``a``, ``b`` is ``2·LCS(a, b) / (|a| + |b|)`` (precision ``LCS/|a|``, recall
``LCS/|b|``, harmonic mean). Checking a candidate against a pool of 10k+ instructions is made cheap by:

1. an inverted index giving, for every pooled item at once (numpy), the multiset token overlap with the
   candidate -- an upper bound of the LCS -- so ``2·overlap/(|a|+|b|) < threshold`` rejects an item without
   computing its LCS (this also covers the length bound ``2·min(|a|,|b|)/(|a|+|b|)``);
2. a bit-parallel LCS (Hyyrö 2004, one Python big-int operation per token) for the few survivors.

Tokens follow the default ``rouge_score`` tokenizer: lowercase, runs of ``[a-z0-9]``, no stemming.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable, Sequence

import numpy as np

ROUGE_THRESHOLD = 0.7
_TOKEN = re.compile(r"[a-z0-9]+")


def rouge_tokens(text: str) -> list[str]:
    """``text`` lowercased and split into runs of ASCII letters and digits."""
    return _TOKEN.findall(text.lower())


def lcs_length(a: Sequence[int], b: Sequence[int]) -> int:
    """Length of the longest common subsequence of ``a`` and ``b`` (bit-parallel, O(|b|·⌈|a|/64⌉) word ops).

    Bit ``i`` of ``masks[x]`` is set where ``a[i] == x``; ``v`` keeps a zero bit for every row of the LCS table
    where the LCS grew, so the LCS is the number of zero bits in the low ``|a|`` bits.
    """
    if not a or not b:
        return 0
    masks: dict[int, int] = {}
    for position, token in enumerate(a):
        masks[token] = masks.get(token, 0) | (1 << position)
    full = (1 << len(a)) - 1
    v = full
    for token in b:
        u = v & masks.get(token, 0)
        v = ((v + u) | (v - u)) & full
    return len(a) - v.bit_count()


def rouge_l_f1(a: Sequence[int], b: Sequence[int]) -> float:
    """ROUGE-L F1 of two token sequences (0 when either is empty)."""
    if not a or not b:
        return 0.0
    return 2.0 * lcs_length(a, b) / (len(a) + len(b))


class _Postings:
    """Item ids and per-item counts of one token, in growable numpy buffers."""

    __slots__ = ("items", "counts", "size")

    def __init__(self) -> None:
        self.items = np.empty(4, dtype=np.int64)
        self.counts = np.empty(4, dtype=np.int32)
        self.size = 0

    def append(self, item: int, count: int) -> None:
        if self.size == len(self.items):
            self.items = np.resize(self.items, 2 * self.size)
            self.counts = np.resize(self.counts, 2 * self.size)
        self.items[self.size], self.counts[self.size] = item, count
        self.size += 1


class RougeLIndex:
    """A growing pool of texts answering "is this text within ROUGE-L ``threshold`` of any pooled text?".

    ``lcs_computed`` counts the exact LCS evaluations (the rest were rejected by the overlap bound).
    """

    def __init__(self, threshold: float = ROUGE_THRESHOLD):
        if not 0.0 < threshold <= 1.0:
            raise ValueError(f"threshold must be in (0, 1] (got {threshold})")
        self.threshold = threshold
        self.vocab: dict[str, int] = {}
        self.sequences: list[list[int]] = []
        self._postings: dict[int, _Postings] = {}
        self._lengths = np.empty(16, dtype=np.int64)
        self.lcs_computed = 0

    def __len__(self) -> int:
        return len(self.sequences)

    def encode(self, text: str, grow: bool = False) -> list[int]:
        """Token ids of ``text``; unknown tokens get fresh ids when ``grow`` (else -1: they match nothing)."""
        ids = []
        for token in rouge_tokens(text):
            if token not in self.vocab and grow:
                self.vocab[token] = len(self.vocab)
            ids.append(self.vocab.get(token, -1))
        return ids

    def add(self, text: str) -> int:
        """Add ``text`` to the pool; return its item id."""
        item = len(self.sequences)
        sequence = self.encode(text, grow=True)
        self.sequences.append(sequence)
        if item == len(self._lengths):
            self._lengths = np.resize(self._lengths, 2 * item)
        self._lengths[item] = len(sequence)
        for token, count in Counter(sequence).items():
            self._postings.setdefault(token, _Postings()).append(item, count)
        return item

    def add_all(self, texts: Iterable[str]) -> None:
        for text in texts:
            self.add(text)

    def max_score(self, text: str, stop_at: float | None = None) -> tuple[float, int | None]:
        """``(best ROUGE-L F1, item id)`` of ``text`` against the pool, over items that can reach ``threshold``.

        Items whose bound is below the threshold are skipped, so a best score under the threshold is a lower
        bound only (enough for de-duplication). Stops early once a score reaches ``stop_at``.
        """
        sequence = self.encode(text)
        if not sequence or not self.sequences:
            return 0.0, None
        best, best_item = 0.0, None
        for item in self._candidates(sequence):
            self.lcs_computed += 1
            score = rouge_l_f1(sequence, self.sequences[item])
            if score > best:
                best, best_item = score, int(item)
                if stop_at is not None and best >= stop_at:
                    break
        return best, best_item

    def is_duplicate(self, text: str) -> bool:
        """Whether ``text`` reaches ROUGE-L ``threshold`` with some pooled text."""
        return self.max_score(text, stop_at=self.threshold)[0] >= self.threshold

    def add_if_novel(self, text: str) -> bool:
        """Add ``text`` unless it duplicates a pooled text; return whether it was added."""
        if self.is_duplicate(text):
            return False
        self.add(text)
        return True

    def _candidates(self, sequence: list[int]) -> np.ndarray:
        """Pooled items whose overlap bound ``2·overlap/(|a|+|b|)`` reaches the threshold, best bound first."""
        n_items = len(self.sequences)
        overlap = np.zeros(n_items, dtype=np.int64)
        for token, count in Counter(sequence).items():
            postings = self._postings.get(token)
            if postings is None:
                continue
            items = postings.items[:postings.size]
            overlap[items] += np.minimum(postings.counts[:postings.size], count)
        bound = 2.0 * overlap / (len(sequence) + self._lengths[:n_items])
        survivors = np.flatnonzero(bound >= self.threshold - 1e-12)
        return survivors[np.argsort(-bound[survivors], kind="stable")]
