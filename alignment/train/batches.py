"""Endless, checkpointable batch streams: each objective's data cycles independently of the other's."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Generic, TypeVar

from alignment.data.collate import LengthBucketedSampler

Example = TypeVar("Example")
Batch = dict[str, Any]


class CyclingBatches(Generic[Example]):
    """Batches over ``examples`` forever: a new shuffled (length-bucketed) order every epoch.

    ``length(example)`` is the padded width an example needs (default: its longest sequence).

    ``bucket_window`` > 1 sorts by length inside windows of ``bucket_window * batch_size`` examples (less
    padding); 1 keeps a plain random order. With ``num_replicas`` > 1, rank ``rank`` gets every
    ``num_replicas``-th batch, so each rank sees different rows and all ranks take the same number of steps.
    ``peek()`` returns the next batch without consuming it (MAXRIGHT's refresh looks before it trains).
    """

    def __init__(self, examples: Sequence[Example], batch_size: int, collate: Callable[[list[Example]], Batch],
                 seed: int, bucket_window: int = 1, num_replicas: int = 1, rank: int = 0,
                 length: Callable[[Example], int] | None = None):
        if not examples:
            raise ValueError("cannot batch an empty dataset")
        self.examples = examples
        self.collate = collate
        measure = length or _length
        self.sampler = LengthBucketedSampler(
            [measure(example) for example in examples], batch_size=batch_size, window=bucket_window, seed=seed,
            num_replicas=num_replicas, rank=rank,
        )
        self._iterator = iter(self.sampler)
        self._peeked: list[int] | None = None
        self.consumed = 0

    def _next_indices(self) -> list[int]:
        try:
            return next(self._iterator)
        except StopIteration:  # epoch finished: the sampler has moved to the next epoch
            self._iterator = iter(self.sampler)
            return next(self._iterator)

    def peek(self) -> Batch:
        """The batch ``next()`` will return."""
        if self._peeked is None:
            self._peeked = self._next_indices()
        return self.collate([self.examples[i] for i in self._peeked])

    def _consume(self) -> list[int]:
        indices = self._peeked if self._peeked is not None else self._next_indices()
        self._peeked = None
        self.consumed += 1
        return indices

    def next(self) -> Batch:
        """Consume and return the next batch."""
        return self.collate([self.examples[i] for i in self._consume()])

    def skip(self) -> None:
        """Consume the next batch without building it."""
        self._consume()

    @property
    def epoch(self) -> int:
        return self.sampler.epoch

    def state_dict(self) -> dict[str, Any]:
        """Position of the next unconsumed batch (a peeked batch is not consumed)."""
        state = self.sampler.state_dict()
        if self._peeked is not None:  # the sampler already handed out the peeked batch of this epoch
            state["position"] -= 1
        return {"sampler": state, "consumed": self.consumed}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.sampler.load_state_dict(state["sampler"])
        self._iterator = iter(self.sampler)
        self._peeked = None
        self.consumed = int(state["consumed"])


def _length(example: Any) -> int:
    if hasattr(example, "input_ids"):
        return len(example.input_ids)
    return len(example.prompt_ids) + max(len(example.chosen_ids), len(example.rejected_ids))


def prefix_shared_length(pair: Any) -> int:
    """Width a pair needs in the prefix-shared layout: prompt + chosen + rejected."""
    return len(pair.prompt_ids) + len(pair.chosen_ids) + len(pair.rejected_ids)


class WithIds:
    """A collate function that also puts the examples' stable ``id`` list in the batch (``batch["ids"]``), so
    per-row values (the reference cache) are joined by id, never by position."""

    def __init__(self, collate: Callable[[list[Any]], Batch]):
        self.collate = collate

    def __call__(self, examples: list[Any]) -> Batch:
        batch = dict(self.collate(examples))
        batch["ids"] = [example.id for example in examples]
        return batch
