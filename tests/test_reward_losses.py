"""The Bradley-Terry reward loss: hand-computed values, its gradient, and TRL 1.16's own RewardTrainer code."""

from __future__ import annotations

import math
from collections import defaultdict
from types import SimpleNamespace
from typing import Any

import pytest
import torch

from alignment.losses_reward import bradley_terry_loss

CHOSEN = torch.tensor([2.0, 0.0, -1.0])
REJECTED = torch.tensor([0.0, 0.0, 1.0])


def softplus(x: float) -> float:
    return math.log1p(math.exp(x))


def test_plain_loss_is_minus_log_sigmoid_of_the_reward_difference() -> None:
    out = bradley_terry_loss(CHOSEN, REJECTED)
    # differences 2, 0, -2: -log σ(d) = log(1 + e^-d)
    assert out.losses.tolist() == pytest.approx([softplus(-2.0), math.log(2.0), softplus(2.0)], abs=1e-6)
    assert out.losses.tolist() == pytest.approx([0.126928, 0.693147, 2.126928], abs=1e-6)
    assert out.metrics["accuracy"] == pytest.approx(1 / 3)  # the tie is not a correct ranking
    assert out.metrics["margin"] == pytest.approx(0.0)
    assert out.metrics["chosen_reward"] == pytest.approx(1 / 3) and out.metrics["rejected_reward"] == pytest.approx(1 / 3)
    assert out.metrics["centering"] == 0.0


def test_margin_and_centering_terms() -> None:
    margin = torch.tensor([1.0, -1.0, 0.0])
    out = bradley_terry_loss(CHOSEN, REJECTED, margin=margin, center_rewards_coefficient=0.5)
    # d - m = 1, 1, -2; centering 0.5 * (r_c + r_r)^2 = 2, 0, 0
    expected = [softplus(-1.0) + 2.0, softplus(-1.0), softplus(2.0)]
    assert out.losses.tolist() == pytest.approx(expected, abs=1e-6)
    assert out.metrics["centering"] == pytest.approx(2.0 / 3)
    assert out.metrics["margin"] == pytest.approx(0.0)  # the reported margin is the raw reward gap


def test_gradient_is_minus_sigmoid_of_minus_the_gap() -> None:
    chosen, rejected = CHOSEN.clone().requires_grad_(True), REJECTED.clone().requires_grad_(True)
    bradley_terry_loss(chosen, rejected).losses.sum().backward()
    expected = -torch.sigmoid(-(CHOSEN - REJECTED))
    torch.testing.assert_close(chosen.grad, expected)
    torch.testing.assert_close(rejected.grad, -expected)


def test_bad_shapes_are_refused() -> None:
    with pytest.raises(ValueError, match="same size"):
        bradley_terry_loss(torch.zeros(3), torch.zeros(2))
    with pytest.raises(ValueError, match="margin"):
        bradley_terry_loss(torch.zeros(3), torch.zeros(3), margin=torch.zeros(2))


class RewardsStub(torch.nn.Module):
    """A 'model' that returns given rewards as ``[2B, 1]`` logits, ignoring its inputs (as TRL's model call)."""

    def __init__(self, rewards: torch.Tensor):
        super().__init__()
        self.rewards = rewards

    def forward(self, **inputs: Any) -> SimpleNamespace:
        return SimpleNamespace(logits=self.rewards.unsqueeze(-1))


def trl_compute_loss(chosen: torch.Tensor, rejected: torch.Tensor, margin: torch.Tensor | None,
                     coefficient: float | None) -> tuple[float, dict[str, list[float]]]:
    """TRL 1.16's ``RewardTrainer.compute_loss`` run on a bare trainer object in eval mode."""
    from trl.trainer.reward_trainer import RewardTrainer

    model = RewardsStub(torch.cat([chosen, rejected])).eval()
    trainer = RewardTrainer.__new__(RewardTrainer)  # only the attributes compute_loss reads
    trainer.model = model
    trainer.args = SimpleNamespace(center_rewards_coefficient=coefficient)  # type: ignore[assignment]
    trainer.accelerator = SimpleNamespace(gather=lambda t: t, gather_for_metrics=lambda t: t)
    trainer._metrics = {"train": defaultdict(list), "eval": defaultdict(list)}
    trainer._total_train_tokens = 0
    inputs: dict[str, Any] = {"input_ids": torch.zeros((2 * len(chosen), 3), dtype=torch.long),
                              "attention_mask": torch.ones((2 * len(chosen), 3), dtype=torch.long)}
    if margin is not None:
        inputs["margin"] = margin
    loss = RewardTrainer.compute_loss(trainer, model, inputs)
    return float(loss), trainer._metrics["eval"]


@pytest.mark.parametrize(("with_margin", "coefficient"), [(False, None), (True, None), (False, 0.01), (True, 0.3)])
def test_mean_loss_and_metrics_match_trl_reward_trainer(with_margin: bool, coefficient: float | None) -> None:
    generator = torch.Generator().manual_seed(7)
    chosen, rejected = torch.randn(32, generator=generator) * 3, torch.randn(32, generator=generator) * 3
    margin = torch.rand(32, generator=generator) * 2 if with_margin else None
    ours = bradley_terry_loss(chosen, rejected, margin, coefficient)
    trl_loss, trl_metrics = trl_compute_loss(chosen, rejected, margin, coefficient)
    assert float(ours.losses.mean()) == pytest.approx(trl_loss, abs=1e-6)
    assert ours.metrics["accuracy"] == pytest.approx(trl_metrics["accuracy"][0], abs=1e-6)
    assert ours.metrics["margin"] == pytest.approx(trl_metrics["margin"][0], abs=1e-6)
    assert ours.metrics["reward_mean"] == pytest.approx(trl_metrics["mean_reward"][0], abs=1e-6)
    # the cases differ from each other, so the comparison is not vacuous
    assert trl_loss != pytest.approx(float(bradley_terry_loss(chosen, rejected).losses.mean()), abs=1e-3) or (
        not with_margin and coefficient is None)
