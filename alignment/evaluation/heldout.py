"""Held-out losses of one model, computed in one place for the training loop's eval steps and for the evaluate
stage: the SFT token-mean cross-entropy, and the preference loss with its implicit-reward accuracy and margin.

The per-example values (:func:`sft_sums`, :func:`preference_values`) are reported two ways: aggregates summed
across ranks for training (:func:`evaluate_heldout`, ``eval/*`` keys, both objectives whatever is trained, so
every method lands on the same loss-space plot), and with bootstrap confidence intervals for the evaluate stage
(:func:`heldout_sft`, :func:`heldout_preference`).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import torch
from tqdm.auto import tqdm

from alignment.evaluation.stats import DEFAULT_RESAMPLES, estimate
from alignment.losses import sft_token_loss_sum
from alignment.train.components import PreferenceComponent, forward_logits

Batch = dict[str, Any]
ReduceSum = Callable[[torch.Tensor], torch.Tensor]


def on_device(batch: Batch, device: torch.device) -> Batch:
    """``batch`` with its tensors moved to ``device`` (ids and other values unchanged)."""
    return {key: value.to(device) if isinstance(value, torch.Tensor) else value for key, value in batch.items()}


def model_device(model: Any) -> torch.device:
    """Where ``model``'s parameters live (the CPU for a parameter-less stand-in)."""
    parameter = next(iter(model.parameters()), None) if hasattr(model, "parameters") else None
    return parameter.device if parameter is not None else torch.device("cpu")


def _each(batches: Sequence[Batch], desc: str, progress: bool, leave: bool) -> Any:
    """``batches`` behind a tqdm bar (``leave=False``: the bar disappears when done, as in training's evals)."""
    return tqdm(batches, desc=desc, total=len(batches), unit="batch", disable=not progress, leave=leave)


@torch.no_grad()
def sft_sums(model: Any, batches: Sequence[Batch], progress: bool = False, leave: bool = True
             ) -> tuple[float, float, int]:
    """(summed cross-entropy, response tokens, rows) over ``batches`` (``collate_sft`` layout)."""
    loss_sum, tokens, rows = 0.0, 0.0, 0
    device = model_device(model)
    for batch in _each(batches, "held-out sft", progress, leave):
        batch = on_device(batch, device)
        summed = sft_token_loss_sum(forward_logits(model, batch), batch["labels"])
        loss_sum += float(summed.loss_sum.double().sum())
        tokens += float(summed.token_count.double().sum())
        rows += int(batch["labels"].shape[0])
    return loss_sum, tokens, rows


@torch.no_grad()
def preference_values(model: Any, batches: Sequence[Batch], preference: PreferenceComponent,
                      progress: bool = False, leave: bool = True) -> tuple[list[float], list[float]]:
    """Per-pair preference losses and implicit-reward margins (chosen reward − rejected reward)."""
    losses: list[float] = []
    margins: list[float] = []
    device = model_device(model)
    for batch in _each(batches, "held-out preference", progress, leave):
        out = preference.outputs(model, on_device(batch, device))
        losses += [float(x) for x in out.losses.double().cpu()]
        margins += [float(x) for x in (out.chosen_rewards - out.rejected_rewards).double().cpu()]
    return losses, margins


def _in_eval_mode(model: Any, work: Callable[[], Any]) -> Any:
    was_training = model.training
    model.eval()
    try:
        return work()
    finally:
        model.train(was_training)


def _identity(tensor: torch.Tensor) -> torch.Tensor:
    return tensor


def evaluate_heldout(model: Any, sft_batches: Sequence[Batch], pref_batches: Sequence[Batch],
                     preference: PreferenceComponent | None, reduce_sum: ReduceSum = _identity,
                     progress: bool = False) -> dict[str, float]:
    """``eval/sft_loss`` (token mean over all held-out response tokens), ``eval/pref_loss`` (mean per-pair
    loss), ``eval/reward_accuracy`` and ``eval/reward_margin``.

    ``reduce_sum`` sums a tensor across ranks when each rank evaluates its own shard of the batches.
    ``progress``: transient bars over the batches (they disappear, leaving the training bar in place).
    """
    def work() -> dict[str, float]:
        results: dict[str, float] = {}
        if sft_batches:
            loss_sum, tokens, _ = sft_sums(model, sft_batches, progress, leave=False)
            totals = reduce_sum(torch.tensor([loss_sum, tokens], dtype=torch.float64))
            results["eval/sft_loss"] = float(totals[0] / totals[1].clamp(min=1))
        if pref_batches and preference is not None:
            losses, margins = preference_values(model, pref_batches, preference, progress, leave=False)
            totals = reduce_sum(torch.tensor([sum(losses), sum(m > 0 for m in margins), sum(margins), len(margins)],
                                             dtype=torch.float64))
            pairs = totals[3].clamp(min=1)
            results.update({"eval/pref_loss": float(totals[0] / pairs), "eval/reward_accuracy": float(totals[1] / pairs),
                            "eval/reward_margin": float(totals[2] / pairs)})
        return results

    result: dict[str, float] = _in_eval_mode(model, work)
    return result


def heldout_sft(model: Any, batches: Sequence[Batch], progress: bool = False) -> dict[str, Any]:
    """Token-mean cross-entropy over every response token of ``batches`` and its perplexity ``exp(loss)``."""
    loss_sum, tokens, rows = _in_eval_mode(model, lambda: sft_sums(model, batches, progress))
    if not tokens:
        raise ValueError("no held-out SFT response tokens to evaluate")
    loss = loss_sum / tokens
    return {"sft_loss": loss, "perplexity": math.exp(min(loss, 700.0)), "rows": rows, "tokens": int(tokens)}


def heldout_preference(model: Any, batches: Sequence[Batch], preference: PreferenceComponent,
                       resamples: int = DEFAULT_RESAMPLES, seed: int = 0, progress: bool = False) -> dict[str, Any]:
    """Mean preference loss, implicit-reward accuracy (chosen reward > rejected reward, with bootstrap CI),
    mean reward margin and the number of exact ties, over the pairs of ``batches``."""
    losses, margins = _in_eval_mode(model, lambda: preference_values(model, batches, preference, progress))
    if not margins:
        raise ValueError("no held-out preference pairs to evaluate")
    correct = [1.0 if margin > 0 else 0.0 for margin in margins]
    return {"pref_loss": sum(losses) / len(losses), "reward_accuracy": estimate(correct, resamples, seed).to_dict(),
            "reward_margin": sum(margins) / len(margins), "reward_ties": sum(1 for m in margins if m == 0),
            "pairs": len(margins)}
