"""Per-pair response log-probs of a preference batch, in either layout.

* concatenated (``collate_preference``): rows ``0..B-1`` prompt+chosen, rows ``B..2B-1`` prompt+rejected, one
  ordinary causal forward;
* prefix-shared (``collate_prefix_shared``): one row ``prompt | chosen | rejected`` per pair with a 4-D mask and
  restarted position ids, so the prompt is computed once.

:func:`pair_logps` dispatches on the batch's keys, so the policy, a frozen reference and the reference cache
all work with both layouts.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from alignment.data.collate import additive_mask, prefix_shared_logps
from alignment.logprobs import sequence_logprobs

Batch = dict[str, Any]


@dataclass(frozen=True)
class PairLogps:
    """Summed response log-probs and response-token counts of each pair; every field is ``[B]``."""

    chosen: torch.Tensor
    rejected: torch.Tensor
    chosen_lengths: torch.Tensor
    rejected_lengths: torch.Tensor


def is_prefix_shared(batch: Batch) -> bool:
    """Whether ``batch`` has the ``collate_prefix_shared`` layout."""
    return "chosen_mask" in batch and "position_ids" in batch


def prefix_shared_mask(model: Any, mask: torch.Tensor) -> torch.Tensor:
    """The 4-D mask in the form ``model``'s attention accepts: boolean for SDPA/flex, additive for eager.

    ``mask`` is the boolean ``[B,1,T,T]`` mask of a prefix-shared batch (True = may attend).
    """
    implementation = getattr(getattr(model, "config", None), "_attn_implementation", "sdpa")
    if implementation == "eager":
        dtype = next(model.parameters()).dtype
        return additive_mask(mask, dtype).to(mask.device)
    if implementation == "flash_attention_2":
        raise ValueError("prefix sharing needs a 4-D attention mask, which flash_attention_2 does not take; "
                         "use model.attn_implementation=sdpa or eager, or stage.train.prefix_sharing=false")
    return mask


def prefix_shared_forward(model: Any, batch: Batch) -> PairLogps:
    """Log-probs of a prefix-shared batch: one forward with the 4-D mask and position ids.

    ``batch``: ``input_ids``/``position_ids [B,T]``, ``attention_mask [B,1,T,T]`` (bool) and the label
    bookkeeping of :func:`alignment.data.collate.collate_prefix_shared`. The output layer runs only at the K
    positions whose logits predict a response token in some row (``logits_to_keep``): the prompt's other
    positions predict nothing, and on long prompts the ``[B,T,V]`` head and its backward are a large share of
    a step.
    """
    kept, positions = kept_logit_positions(batch)
    logits = model(input_ids=batch["input_ids"], attention_mask=prefix_shared_mask(model, batch["attention_mask"]),
                   position_ids=batch["position_ids"], logits_to_keep=kept).logits  # [B,K,V]
    chosen, rejected = prefix_shared_logps(logits, {**batch, "logit_positions": positions})
    return PairLogps(chosen, rejected, batch["chosen_lengths"], batch["rejected_lengths"])


def kept_logit_positions(batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
    """The sorted positions ``[K]`` whose logits predict a response token in any row of a prefix-shared batch,
    and ``logit_positions [B,T]`` re-indexed into them (0 where no token is predicted)."""
    scored = batch["chosen_mask"] | batch["rejected_mask"]  # [B,T]
    kept = torch.unique(batch["logit_positions"][scored])  # sorted
    if kept.numel() == 0:  # no response token at all: keep one position so the forward stays well-formed
        kept = torch.zeros(1, dtype=torch.long, device=scored.device)
    positions = torch.searchsorted(kept, batch["logit_positions"]).clamp(max=kept.numel() - 1)
    return kept, positions.masked_fill(~scored, 0)


def concatenated_forward(model: Any, batch: Batch) -> PairLogps:
    """Log-probs of a ``collate_preference`` batch ``[2B,T]``: chosen and rejected rows in one forward."""
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    logps = sequence_logprobs(logits, batch["labels"])
    half = logps.sum.shape[0] // 2
    return PairLogps(logps.sum[:half], logps.sum[half:], logps.count[:half], logps.count[half:])


def pair_logps(model: Any, batch: Batch) -> PairLogps:
    """Per-pair log-prob sums of ``batch`` under ``model``, whichever layout the batch has."""
    if is_prefix_shared(batch):
        return prefix_shared_forward(model, batch)
    return concatenated_forward(model, batch)


def pair_count(batch: Batch) -> int:
    """Number of pairs in a preference batch of either layout."""
    rows = int(batch["input_ids"].shape[0])
    return rows if is_prefix_shared(batch) else rows // 2
