"""Held-out evaluation at every eval step: BOTH the SFT loss and the preference loss/accuracy, whatever the
objective being trained, so every method lands on the same loss-space plot (f_SFT, f_pref)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch

from alignment.losses import sft_token_loss_sum
from alignment.train.components import PreferenceComponent, forward_logits

Batch = dict[str, Any]
ReduceSum = Callable[[torch.Tensor], torch.Tensor]


def _identity(tensor: torch.Tensor) -> torch.Tensor:
    return tensor


@torch.no_grad()
def evaluate_heldout(model: Any, sft_batches: Sequence[Batch], pref_batches: Sequence[Batch],
                     preference: PreferenceComponent | None, reduce_sum: ReduceSum = _identity) -> dict[str, float]:
    """``eval/sft_loss`` (token mean over all held-out response tokens), ``eval/pref_loss`` (mean per-pair
    loss), ``eval/reward_accuracy`` and ``eval/reward_margin``.

    ``reduce_sum`` sums a tensor across ranks when each rank evaluates its own shard of the batches.
    """
    was_training = model.training
    model.eval()
    try:
        results: dict[str, float] = {}
        if sft_batches:
            totals = torch.zeros(2, dtype=torch.float64)
            for batch in sft_batches:
                summed = sft_token_loss_sum(forward_logits(model, batch), batch["labels"])
                totals += torch.stack([summed.loss_sum.sum().double().cpu(),
                                       summed.token_count.sum().double().cpu()])
            totals = reduce_sum(totals)
            results["eval/sft_loss"] = float(totals[0] / totals[1].clamp(min=1))
        if pref_batches and preference is not None:
            totals = torch.zeros(4, dtype=torch.float64)  # loss sum, correct, margin sum, pairs
            for batch in pref_batches:
                out = preference.outputs(model, batch)
                margin = (out.chosen_rewards - out.rejected_rewards).double().cpu()
                totals += torch.stack([out.losses.double().sum().cpu(), (margin > 0).double().sum(),
                                       margin.sum(), torch.tensor(float(margin.numel()), dtype=torch.float64)])
            totals = reduce_sum(totals)
            pairs = totals[3].clamp(min=1)
            results.update({"eval/pref_loss": float(totals[0] / pairs), "eval/reward_accuracy": float(totals[1] / pairs),
                            "eval/reward_margin": float(totals[2] / pairs)})
        return results
    finally:
        model.train(was_training)
