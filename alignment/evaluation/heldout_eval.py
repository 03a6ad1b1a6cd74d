"""Held-out SFT loss/perplexity and preference loss, implicit-reward accuracy and margin of one model.

Unlike the training-time :func:`alignment.train.heldout.evaluate_heldout` (aggregates only), this keeps the
per-pair values so the accuracy gets a bootstrap confidence interval.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch

from alignment.evaluation.stats import DEFAULT_RESAMPLES, estimate
from alignment.losses import sft_token_loss_sum
from alignment.train.components import PreferenceComponent, forward_logits

Batch = dict[str, Any]


def on_device(batch: Batch, device: torch.device) -> Batch:
    """``batch`` with its tensors moved to ``device`` (ids and other values unchanged)."""
    return {key: value.to(device) if isinstance(value, torch.Tensor) else value for key, value in batch.items()}


def model_device(model: Any) -> torch.device:
    """Where ``model``'s parameters live (the CPU for a parameter-less stand-in)."""
    parameter = next(iter(model.parameters()), None) if hasattr(model, "parameters") else None
    return parameter.device if parameter is not None else torch.device("cpu")


@torch.no_grad()
def heldout_sft(model: Any, batches: Sequence[Batch]) -> dict[str, Any]:
    """Token-mean cross-entropy over every response token of ``batches`` (``collate_sft`` layout) and its
    perplexity ``exp(loss)``."""
    model.eval()
    loss_sum, tokens, rows = 0.0, 0.0, 0
    for batch in (on_device(b, model_device(model)) for b in batches):
        summed = sft_token_loss_sum(forward_logits(model, batch), batch["labels"])
        loss_sum += float(summed.loss_sum.double().sum())
        tokens += float(summed.token_count.double().sum())
        rows += int(batch["labels"].shape[0])
    if not tokens:
        raise ValueError("no held-out SFT response tokens to evaluate")
    loss = loss_sum / tokens
    return {"sft_loss": loss, "perplexity": math.exp(min(loss, 700.0)), "rows": rows, "tokens": int(tokens)}


@torch.no_grad()
def heldout_preference(model: Any, batches: Sequence[Batch], preference: PreferenceComponent,
                       resamples: int = DEFAULT_RESAMPLES, seed: int = 0) -> dict[str, Any]:
    """Mean preference loss, implicit-reward accuracy (chosen reward > rejected reward, with bootstrap CI),
    mean reward margin and the number of exact ties, over the pairs of ``batches``."""
    model.eval()
    losses: list[float] = []
    margins: list[float] = []
    for batch in (on_device(b, model_device(model)) for b in batches):
        out = preference.outputs(model, batch)
        losses += [float(x) for x in out.losses.double().cpu()]
        margins += [float(x) for x in (out.chosen_rewards - out.rejected_rewards).double().cpu()]
    if not margins:
        raise ValueError("no held-out preference pairs to evaluate")
    correct = [1.0 if margin > 0 else 0.0 for margin in margins]
    return {"pref_loss": sum(losses) / len(losses), "reward_accuracy": estimate(correct, resamples, seed).to_dict(),
            "reward_margin": sum(margins) / len(margins), "reward_ties": sum(1 for m in margins if m == 0),
            "pairs": len(margins)}
