"""Batch tokenized examples into right-padded torch tensors; labels are -100 everywhere but on responses.

Three layouts:

* :func:`collate_sft` - one sequence per example.
* :func:`collate_preference` - the concatenated forward: chosen rows then rejected rows in one ``[2B, T]`` batch.
* :func:`collate_prefix_shared` - one row per pair, ``prompt | chosen | rejected``, with a 4-D mask that hides
  chosen from rejected and position ids that restart the rejected response at ``len(prompt)``; the prompt is
  run once instead of twice. :func:`prefix_shared_logps` turns the model's logits back into per-sequence sums.

Labels are unshifted (``labels[t]`` is the target token at position ``t``), as Hugging Face models expect.
:class:`LengthBucketedSampler` groups examples of similar length into batches to cut padding.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import torch

from alignment.data.tokenize import IGNORE_INDEX, TokenizedPair, TokenizedSFT
from alignment.logprobs import target_logprobs


def collate_sft(examples: Sequence[TokenizedSFT], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-pad SFT examples.

    Returns ``input_ids [B,T]`` (pad = ``pad_id``), ``attention_mask [B,T]`` (1 on real tokens) and ``labels
    [B,T]`` (token ids on response tokens, -100 on prompt and padding). When every example carries a KTO label,
    also ``desirable [B]`` (bool).
    """
    _require_examples(examples)
    batch = _pad_rows([ex.input_ids for ex in examples], [ex.labels for ex in examples], pad_id)
    labels = [ex.label for ex in examples]
    if all(label is not None for label in labels):
        batch["desirable"] = torch.tensor(labels, dtype=torch.bool)
    return batch


def collate_preference(pairs: Sequence[TokenizedPair], pad_id: int) -> dict[str, torch.Tensor]:
    """Concatenated forward: rows ``0..B-1`` are prompt+chosen, rows ``B..2B-1`` prompt+rejected (same order).

    Returns ``input_ids``, ``attention_mask``, ``labels`` (all ``[2B,T]``, right-padded), ``response_lengths
    [2B]`` (loss tokens per row) and ``prompt_lengths [2B]``.
    """
    _require_examples(pairs)
    sequences, labels, response_lengths, prompt_lengths = [], [], [], []
    for side in ("chosen", "rejected"):
        for pair in pairs:
            response = pair.chosen_ids if side == "chosen" else pair.rejected_ids
            sequences.append(pair.prompt_ids + response)
            labels.append([IGNORE_INDEX] * len(pair.prompt_ids) + response)
            response_lengths.append(len(response))
            prompt_lengths.append(len(pair.prompt_ids))
    batch = _pad_rows(sequences, labels, pad_id)
    batch["response_lengths"] = torch.tensor(response_lengths, dtype=torch.long)
    batch["prompt_lengths"] = torch.tensor(prompt_lengths, dtype=torch.long)
    return batch


def collate_prefix_shared(pairs: Sequence[TokenizedPair], pad_id: int) -> dict[str, torch.Tensor]:
    """One row per pair: ``prompt (P) | chosen (C) | rejected (R) | padding``, T = max(P + C + R).

    Returns:
      ``input_ids [B,T]``; ``attention_mask [B,1,T,T]`` bool, True where query t may attend key s: prompt and
      chosen tokens attend causally to prompt + chosen, rejected tokens to the prompt and causally to rejected
      (never to chosen), padding only to itself (keeps softmax finite); use :func:`additive_mask` for eager
      attention. ``position_ids [B,T]``: ``0..P+C-1`` then ``P..P+R-1`` for rejected, 0 on padding.
      ``labels [B,T]``: target ids on chosen and rejected tokens, -100 elsewhere. ``logit_positions [B,T]``:
      the position whose logits predict token t (``t-1``, except the first rejected token, predicted from the
      last prompt token ``P-1``; 0 where unused). ``chosen_mask``/``rejected_mask [B,T]`` bool; ``prompt_lengths``,
      ``chosen_lengths``, ``rejected_lengths [B]``; ``padding_mask [B,T]`` (1 on real tokens).
    """
    _require_examples(pairs)
    width = max(len(p.prompt_ids) + len(p.chosen_ids) + len(p.rejected_ids) for p in pairs)
    size = len(pairs)
    batch = {
        "input_ids": torch.full((size, width), pad_id, dtype=torch.long),
        "attention_mask": torch.zeros((size, 1, width, width), dtype=torch.bool),
        "position_ids": torch.zeros((size, width), dtype=torch.long),
        "labels": torch.full((size, width), IGNORE_INDEX, dtype=torch.long),
        "logit_positions": torch.zeros((size, width), dtype=torch.long),
        "chosen_mask": torch.zeros((size, width), dtype=torch.bool),
        "rejected_mask": torch.zeros((size, width), dtype=torch.bool),
        "padding_mask": torch.zeros((size, width), dtype=torch.long),
    }
    for row, pair in enumerate(pairs):
        _fill_prefix_shared_row(batch, row, pair)
    batch["prompt_lengths"] = torch.tensor([len(p.prompt_ids) for p in pairs], dtype=torch.long)
    batch["chosen_lengths"] = torch.tensor([len(p.chosen_ids) for p in pairs], dtype=torch.long)
    batch["rejected_lengths"] = torch.tensor([len(p.rejected_ids) for p in pairs], dtype=torch.long)
    return batch


def additive_mask(mask: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Boolean ``[B,1,T,T]`` mask -> additive mask of ``dtype``: 0 where allowed, the dtype's minimum elsewhere."""
    additive = torch.zeros(mask.shape, dtype=dtype)
    return additive.masked_fill(~mask, torch.finfo(dtype).min)


def prefix_shared_logps(logits: torch.Tensor, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed response log-probs ``(chosen [B], rejected [B])`` from logits ``[B,T,V]`` of a prefix-shared batch.

    Selective: only the N response tokens' predicting rows are taken (``[N,V]``, float32), and each token's
    log-prob is ``logit[target] − logsumexp(logits)``; a full ``[B,T,V]`` log-softmax (and its gathered copy,
    and both in the backward) would cost several times the logits' memory traffic for prompt positions that
    predict nothing.
    """
    scored = batch["chosen_mask"] | batch["rejected_mask"]  # [B,T]
    rows, cols = scored.nonzero(as_tuple=True)  # [N] each
    predicting = logits[rows, batch["logit_positions"][rows, cols]]  # [N,V]
    token = target_logprobs(predicting, batch["labels"][rows, cols])  # [N]
    token_logps = torch.zeros(scored.shape, dtype=torch.float32, device=logits.device).index_put((rows, cols), token)
    chosen = (token_logps * batch["chosen_mask"]).sum(dim=1)
    rejected = (token_logps * batch["rejected_mask"]).sum(dim=1)
    return chosen, rejected


# --- helpers -----------------------------------------------------------------------------------------------


def _require_examples(examples: Sequence[object]) -> None:
    if len(examples) == 0:
        raise ValueError("cannot collate an empty batch")


def _pad_rows(sequences: list[list[int]], labels: list[list[int]], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-pad id and label rows to the longest row: ``input_ids``, ``attention_mask``, ``labels`` [N,T]."""
    width = max(len(ids) for ids in sequences)
    input_ids = torch.full((len(sequences), width), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((len(sequences), width), dtype=torch.long)
    padded_labels = torch.full((len(sequences), width), IGNORE_INDEX, dtype=torch.long)
    for row, (ids, row_labels) in enumerate(zip(sequences, labels, strict=True)):
        input_ids[row, : len(ids)] = torch.tensor(ids, dtype=torch.long)
        attention_mask[row, : len(ids)] = 1
        padded_labels[row, : len(row_labels)] = torch.tensor(row_labels, dtype=torch.long)
    return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": padded_labels}


def _fill_prefix_shared_row(batch: dict[str, torch.Tensor], row: int, pair: TokenizedPair) -> None:
    """Write one pair's ids, mask, positions and label bookkeeping into row ``row`` of ``batch``."""
    prompt, chosen, rejected = len(pair.prompt_ids), len(pair.chosen_ids), len(pair.rejected_ids)
    end_chosen, end = prompt + chosen, prompt + chosen + rejected
    ids = pair.prompt_ids + pair.chosen_ids + pair.rejected_ids
    batch["input_ids"][row, :end] = torch.tensor(ids, dtype=torch.long)
    batch["padding_mask"][row, :end] = 1
    causal = torch.ones((end, end), dtype=torch.bool).tril()
    causal[end_chosen:end, prompt:end_chosen] = False  # rejected never sees chosen
    mask = batch["attention_mask"][row, 0]
    mask[:end, :end] = causal
    mask[end:, end:] = torch.eye(mask.shape[0] - end, dtype=torch.bool)  # padding attends to itself only
    batch["position_ids"][row, :end_chosen] = torch.arange(end_chosen)
    batch["position_ids"][row, end_chosen:end] = torch.arange(prompt, prompt + rejected)
    batch["labels"][row, prompt:end] = torch.tensor(pair.chosen_ids + pair.rejected_ids, dtype=torch.long)
    batch["logit_positions"][row, prompt:end] = torch.arange(prompt - 1, end - 1)
    batch["logit_positions"][row, end_chosen] = prompt - 1
    batch["chosen_mask"][row, prompt:end_chosen] = True
    batch["rejected_mask"][row, end_chosen:end] = True


class LengthBucketedSampler:
    """Batch sampler that groups similar lengths: less padding, still a fresh random order every epoch.

    Per epoch: shuffle all indices, sort by length inside consecutive windows of ``window * batch_size``
    indices, cut into batches, shuffle the batch order. The order depends only on ``(seed, epoch)``. Iterating
    to the end advances the epoch (``set_epoch`` overrides it); ``state_dict()`` / ``load_state_dict()`` resume
    mid-epoch at the exact next batch. With ``num_replicas > 1`` rank ``rank`` takes every ``num_replicas``-th
    batch (the list is padded by wrapping, or cut with ``drop_last``); leave it at 1 when the loader is already
    sharded (e.g. by accelerate). Yields lists of dataset indices; use as ``DataLoader(batch_sampler=...)``.
    """

    def __init__(self, lengths: Sequence[int], batch_size: int, window: int, seed: int,
                 drop_last: bool = False, num_replicas: int = 1, rank: int = 0) -> None:
        if batch_size < 1 or window < 1:
            raise ValueError(f"batch_size={batch_size} and window={window} must be >= 1")
        if not 0 <= rank < num_replicas:
            raise ValueError(f"rank={rank} must be in [0, num_replicas={num_replicas})")
        self.lengths = np.asarray(lengths, dtype=np.int64)
        self.batch_size, self.window, self.seed = batch_size, window, seed
        self.drop_last, self.num_replicas, self.rank = drop_last, num_replicas, rank
        self.epoch = 0
        self._position = 0  # batches already handed out in the current epoch (this rank)

    def set_epoch(self, epoch: int) -> None:
        """Start ``epoch`` from its first batch."""
        self.epoch, self._position = epoch, 0

    def epoch_batches(self, epoch: int) -> list[list[int]]:
        """All batches of ``epoch`` for this rank, in order (a pure function of seed, epoch and lengths)."""
        rng = np.random.default_rng([self.seed, epoch])
        order = rng.permutation(len(self.lengths))
        chunk = self.window * self.batch_size
        batches: list[list[int]] = []
        for start in range(0, len(order), chunk):
            block = order[start:start + chunk]
            block = block[np.argsort(self.lengths[block], kind="stable")]  # ties keep their shuffled order
            batches.extend(block[i:i + self.batch_size].tolist() for i in range(0, len(block), self.batch_size))
        if self.drop_last and batches and len(batches[-1]) < self.batch_size:
            batches.pop()
        batches = [batches[i] for i in rng.permutation(len(batches))]
        return self._shard(batches)

    def _shard(self, batches: list[list[int]]) -> list[list[int]]:
        if self.num_replicas == 1 or not batches:
            return batches
        remainder = len(batches) % self.num_replicas
        if remainder and self.drop_last:
            batches = batches[: len(batches) - remainder]
        elif remainder:
            batches = batches + batches[: self.num_replicas - remainder]  # every rank runs the same step count
        return batches[self.rank::self.num_replicas]

    def __iter__(self) -> Iterator[list[int]]:
        batches = self.epoch_batches(self.epoch)
        while self._position < len(batches):
            self._position += 1
            yield batches[self._position - 1]
        self.epoch, self._position = self.epoch + 1, 0

    def __len__(self) -> int:
        full, rest = divmod(len(self.lengths), self.batch_size)
        total = full + int(rest > 0 and not self.drop_last)
        if self.num_replicas == 1:
            return total
        return total // self.num_replicas if self.drop_last else -(-total // self.num_replicas)

    def state_dict(self, batches_consumed: int | None = None) -> dict[str, Any]:
        """Where to resume: epoch and position. Pass ``batches_consumed`` when loader workers prefetch batches
        beyond what training consumed (the sampler's own count would then be ahead)."""
        position = self._position if batches_consumed is None else batches_consumed
        return {"epoch": self.epoch, "position": position, "seed": self.seed, "batch_size": self.batch_size,
                "window": self.window, "num_samples": len(self.lengths), "num_replicas": self.num_replicas}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Resume at ``state``; refuses a state from a sampler whose batches would differ."""
        for key in ("seed", "batch_size", "window", "num_samples", "num_replicas"):
            mine = len(self.lengths) if key == "num_samples" else getattr(self, key)
            if state[key] != mine:
                raise ValueError(f"sampler state has {key}={state[key]} but this sampler has {mine}: "
                                 "resuming would not reproduce the same batches")
        self.epoch, self._position = int(state["epoch"]), int(state["position"])
