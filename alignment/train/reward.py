"""Reward-model training for the joint loop: a Bradley-Terry component and a held-out evaluation.

Both take ``collate_preference`` batches (rows ``0..B-1`` prompt+chosen, rows ``B..2B-1`` prompt+rejected; the
prompt ids come from the chat template with the generation prompt, each response ends with its EOS), the layout
every preference stage already builds, and score each row with a one-label sequence-classification model
(:func:`alignment.models.reward.build_reward_model`). An optional ``margin [B]`` in the batch is the per-pair
margin of :func:`alignment.losses_reward.bradley_terry_loss`.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import torch
from tqdm.auto import tqdm

from alignment.evaluation.stats import DEFAULT_RESAMPLES, estimate
from alignment.losses_reward import RewardLossOutput, bradley_terry_loss
from alignment.train.prefix_forward import is_prefix_shared

Batch = dict[str, Any]


def sequence_rewards(model: Any, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """Float32 rewards ``[N]`` of right-padded rows ``input_ids``/``attention_mask [N,T]``.

    Padding positions are rewritten to ``config.pad_token_id`` first, so the head (which reads each row's last
    token that is not the pad id) finds the last real token whatever id the batch was padded with.
    """
    inner = getattr(model, "module", model)  # under DDP / DeepSpeed the config sits on the wrapped model
    pad = getattr(getattr(inner, "config", None), "pad_token_id", None)
    if pad is None:
        raise ValueError("the reward model's config has no pad_token_id (build it with build_reward_model)")
    ids = input_ids.masked_fill(attention_mask == 0, int(pad))
    return model(input_ids=ids, attention_mask=attention_mask).logits[:, 0].float()


def pair_rewards(model: Any, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
    """``(chosen [B], rejected [B])`` rewards of a ``collate_preference`` batch of ``2B`` rows."""
    if is_prefix_shared(batch):
        raise ValueError("reward-model training scores whole sequences and needs the concatenated "
                         "collate_preference layout; turn prefix sharing off")
    rows = batch["input_ids"].shape[0]
    if rows % 2:
        raise ValueError(f"a preference batch has chosen rows then rejected rows; got an odd {rows} rows")
    rewards = sequence_rewards(model, batch["input_ids"], batch["attention_mask"])
    return rewards[: rows // 2], rewards[rows // 2:]


@dataclass
class RewardComponent:
    """Bradley-Terry reward-model training on preference batches (the loop's :class:`Component` protocol).

    The training loss is the batch mean of the per-pair losses; ``center_rewards_coefficient`` adds TRL's
    reward-centering term (``None``: off).
    """

    center_rewards_coefficient: float | None = None
    name: str = "reward"

    def outputs(self, model: Any, batch: Batch) -> RewardLossOutput:
        """Per-pair losses and metrics of ``batch``."""
        chosen, rejected = pair_rewards(model, batch)
        margin = batch.get("margin")
        return bradley_terry_loss(chosen, rejected, None if margin is None else margin.to(chosen.device),
                                  self.center_rewards_coefficient)

    def loss(self, model: Any, batch: Batch) -> tuple[torch.Tensor, dict[str, float]]:
        out = self.outputs(model, batch)
        loss = out.losses.mean()
        return loss, {"rm_loss": float(loss.detach()), **{f"rm_{k}": v for k, v in out.metrics.items()}}


def evaluate_reward_model(model: Any, batches: Iterable[Batch], resamples: int = DEFAULT_RESAMPLES, seed: int = 0,
                          progress: bool = False) -> dict[str, float]:
    """Held-out metrics of ``model`` over ``collate_preference`` ``batches`` (no gradient, eval mode).

    Returns ``accuracy`` (share of pairs with r_c > r_r) with its seeded percentile-bootstrap 95% interval
    ``accuracy_ci_low``/``accuracy_ci_high`` (``resamples`` resamples), ``pairs``, ``margin`` (mean r_c − r_r),
    ``loss`` (mean −log σ(r_c − r_r): no margin, no centering), ``chosen_reward``/``rejected_reward`` (means), and ``reward_mean`` /
    ``reward_std`` (sample standard deviation) over all 2·pairs rewards. The model's train/eval mode is restored.
    """
    chosen, rejected = _score_pairs(model, batches, progress)
    correct = (chosen > rejected).float().tolist()
    accuracy = estimate(correct, resamples=resamples, seed=seed)
    out = bradley_terry_loss(chosen, rejected)
    rewards = torch.cat([chosen, rejected])
    return {
        "accuracy": accuracy.value, "accuracy_ci_low": accuracy.low, "accuracy_ci_high": accuracy.high,
        "pairs": float(len(correct)), "margin": out.metrics["margin"], "loss": float(out.losses.mean()),
        "chosen_reward": out.metrics["chosen_reward"], "rejected_reward": out.metrics["rejected_reward"],
        "reward_mean": float(rewards.mean()), "reward_std": float(rewards.std()) if rewards.numel() > 1 else 0.0,
    }


@torch.no_grad()
def _score_pairs(model: Any, batches: Iterable[Batch], progress: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """All chosen and all rejected rewards ``[P]`` of ``batches``, on the CPU."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    chosen, rejected = [], []
    try:
        for batch in tqdm(batches, desc="reward eval", disable=not progress):
            on_device = {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}
            good, bad = pair_rewards(model, on_device)
            chosen.append(good.cpu())
            rejected.append(bad.cpu())
    finally:
        model.train(was_training)
    if not chosen:
        raise ValueError("evaluate_reward_model got no batches: there is nothing to evaluate")
    return torch.cat(chosen), torch.cat(rejected)
