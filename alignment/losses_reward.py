"""The Bradley-Terry loss of a scalar reward model, with an optional margin and reward centering.

For a pair with chosen reward r_c = r(x, y_c) and rejected reward r_r = r(x, y_r), the per-example loss is

    ℓ = −log σ(r_c − r_r − m) + c · (r_c + r_r)²

* −log σ(r_c − r_r): the Bradley-Terry model P(y_c ≻ y_r) = σ(r_c − r_r) (Bradley & Terry 1952), fitted by
  maximum likelihood as the reward-model loss of InstructGPT (Ouyang et al. 2022, arXiv 2203.02155, Eq. 1).
* m: an optional per-pair margin, larger for pairs rated further apart (Llama 2, Touvron et al. 2023,
  arXiv 2307.09288, Eq. 2); m = 0 without one.
* c · (r_c + r_r)²: the auxiliary loss that pushes the rewards towards mean zero (Eisenstein et al. 2023,
  "Helping or Herding? Reward Model Ensembles Mitigate but do not Eliminate Reward Hacking", arXiv 2312.09244,
  Eq. 2), TRL's ``center_rewards_coefficient``; off (``None``) by default, 0.01 recommended there.

The mean of ℓ over a batch equals TRL 1.16 ``RewardTrainer.compute_loss``: ``−logsigmoid(r_c − r_r − m).mean()
+ c · mean((r_c + r_r)²)``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class RewardLossOutput:
    """Per-pair losses ``[B]`` (float32, not reduced) and batch metrics.

    ``metrics``: ``accuracy`` (share of pairs with r_c > r_r; a tie counts as wrong, as in TRL), ``margin``
    (mean r_c − r_r), ``chosen_reward``/``rejected_reward`` (means), ``reward_mean`` over all 2B rewards, and
    ``centering`` (mean c · (r_c + r_r)², 0 when off).
    """

    losses: torch.Tensor
    metrics: dict[str, float]


def bradley_terry_loss(chosen_rewards: torch.Tensor, rejected_rewards: torch.Tensor,
                       margin: torch.Tensor | None = None,
                       center_rewards_coefficient: float | None = None) -> RewardLossOutput:
    """Per-pair Bradley-Terry loss (see the module docstring for the equation and its sources).

    ``chosen_rewards``, ``rejected_rewards``: ``[B]``; ``margin``: ``[B]`` or ``None`` (m = 0).
    """
    chosen, rejected = _checked(chosen_rewards, rejected_rewards, margin)
    difference = chosen - rejected
    shifted = difference if margin is None else difference - margin.float()
    losses = -F.logsigmoid(shifted)
    centering = torch.zeros_like(losses)
    if center_rewards_coefficient is not None:
        centering = center_rewards_coefficient * (chosen + rejected) ** 2
        losses = losses + centering
    with torch.no_grad():
        metrics = {
            "accuracy": float((difference > 0).float().mean()),
            "margin": float(difference.mean()),
            "chosen_reward": float(chosen.mean()),
            "rejected_reward": float(rejected.mean()),
            "reward_mean": float(torch.cat([chosen, rejected]).mean()),
            "centering": float(centering.mean()),
        }
    return RewardLossOutput(losses=losses, metrics=metrics)


def _checked(chosen: torch.Tensor, rejected: torch.Tensor,
             margin: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
    """Both reward vectors as float32 after checking shapes: ``[B]`` each, margin ``[B]`` too, B >= 1."""
    if chosen.dim() != 1 or chosen.shape != rejected.shape or chosen.numel() == 0:
        raise ValueError(f"chosen and rejected rewards must be two non-empty [B] vectors of the same size "
                         f"(got {tuple(chosen.shape)} and {tuple(rejected.shape)})")
    if margin is not None and margin.shape != chosen.shape:
        raise ValueError(f"margin must be [B] = {tuple(chosen.shape)} like the rewards (got {tuple(margin.shape)})")
    return chosen.float(), rejected.float()
