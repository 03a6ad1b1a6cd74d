"""Tests for the reference-free losses (SimPO, ORPO with its stable log1mexp) and unpaired KTO.

Expected values are written out with the math module; shared helpers come from tests/test_losses.py.
"""

from __future__ import annotations

import math

import pytest
import torch

from alignment.losses import LossParams, LossType, PreferenceInputs, preference_loss
from alignment.losses_pref import log1mexp
from tests.test_losses import ROWS, logsig, make_inputs, sig

# ---------------------------------------------------------------- SimPO

# ROWS: ℓ̄_w = (−10/4, −12/5) = (−2.5, −2.4); ℓ̄_l = (−14/7, −11/2) = (−2.0, −5.5).
MEAN_CHOSEN = [-2.5, -2.4]
MEAN_REJECTED = [-2.0, -5.5]


def test_simpo_hand_computed() -> None:
    # β = 2, γ = 0.5: logits 2·(−0.5) − 0.5 = −1.5 and 2·3.1 − 0.5 = 5.7.
    expected = torch.tensor([-logsig(-1.5), -logsig(5.7)])
    out = preference_loss("simpo", LossParams(beta=2.0, gamma=0.5), make_inputs())
    torch.testing.assert_close(out.losses, expected)
    torch.testing.assert_close(out.chosen_rewards, torch.tensor([2.0 * -2.5, 2.0 * -2.4]))  # β·ℓ̄_w
    torch.testing.assert_close(out.rejected_rewards, torch.tensor([2.0 * -2.0, 2.0 * -5.5]))
    smoothed = preference_loss("simpo", LossParams(beta=2.0, gamma=0.5, label_smoothing=0.1), make_inputs())
    expected_smoothed = [-0.9 * logsig(z) - 0.1 * logsig(-z) for z in (-1.5, 5.7)]
    torch.testing.assert_close(smoothed.losses, torch.tensor(expected_smoothed))


def test_simpo_without_margin_is_reference_free_length_normalised_dpo() -> None:
    # DPO on per-token averages with a zero reference: −log σ(β(ℓ̄_w − ℓ̄_l)).
    averaged = PreferenceInputs(
        policy_chosen_logps=torch.tensor(MEAN_CHOSEN),
        policy_rejected_logps=torch.tensor(MEAN_REJECTED),
        chosen_lengths=torch.ones(2),
        rejected_lengths=torch.ones(2),
        reference_chosen_logps=torch.zeros(2),
        reference_rejected_logps=torch.zeros(2),
    )
    dpo = preference_loss("dpo", LossParams(beta=2.0), averaged).losses
    simpo = preference_loss("simpo", LossParams(beta=2.0, gamma=0.0), make_inputs()).losses
    torch.testing.assert_close(simpo, dpo)
    torch.testing.assert_close(simpo, torch.tensor([-logsig(2.0 * -0.5), -logsig(2.0 * 3.1)]))


# ---------------------------------------------------------------- ORPO


def log_odds(mean_logp: float) -> float:
    """log(p / (1 − p)) with p = e^ℓ̄, naive float64."""
    return mean_logp - math.log(1.0 - math.exp(mean_logp))


ORPO_ROWS = [
    {"pw": -2.0, "lw": 4, "pl": -7.0, "ll": 7, "refw": 0.0, "refl": 0.0},  # ℓ̄_w = −0.5, ℓ̄_l = −1.0
    {"pw": -0.3, "lw": 1, "pl": -1.6, "ll": 2, "refw": 0.0, "refl": 0.0},  # ℓ̄_w = −0.3, ℓ̄_l = −0.8
]


def test_orpo_hand_computed_includes_per_example_nll() -> None:
    expected = [
        0.5 - 0.1 * logsig(log_odds(-0.5) - log_odds(-1.0)),
        0.3 - 0.1 * logsig(log_odds(-0.3) - log_odds(-0.8)),
    ]
    out = preference_loss("orpo", LossParams(beta=0.1), make_inputs(ORPO_ROWS))
    torch.testing.assert_close(out.losses, torch.tensor(expected))
    torch.testing.assert_close(out.chosen_rewards, torch.tensor([0.1 * -0.5, 0.1 * -0.3]))
    assert out.metrics["nll"] == pytest.approx(0.4)
    ratio = [logsig(log_odds(-0.5) - log_odds(-1.0)), logsig(log_odds(-0.3) - log_odds(-0.8))]
    assert out.metrics["log_odds_ratio"] == pytest.approx(sum(ratio) / 2, rel=1e-5)
    inputs = make_inputs(ORPO_ROWS)
    inputs.policy_chosen_nll_mean = torch.tensor([1.0, 1.0])  # e.g. TRL's prompt + response NLL
    given = preference_loss("orpo", LossParams(beta=0.1), inputs).losses
    torch.testing.assert_close(given, torch.tensor(expected) - torch.tensor([0.5, 0.3]) + 1.0)


def test_log1mexp_matches_float64_across_ranges() -> None:
    xs = [-1e-7, -1e-5, -1e-3, -0.1, -0.5, -math.log(2.0), -0.7, -2.0, -5.0, -30.0, -100.0, -1e4]
    got = log1mexp(torch.tensor(xs, dtype=torch.float32))
    expected = torch.tensor([math.log(1.0 - math.exp(x)) for x in xs], dtype=torch.float32)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)
    naive = torch.log(1.0 - torch.exp(torch.tensor([-1e-7])))  # float32 cancellation: a naive version fails
    assert not torch.isclose(naive, expected[:1], rtol=1e-2).item()
    x = torch.tensor(xs, requires_grad=True)
    log1mexp(x).sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()


def test_orpo_is_finite_near_zero_and_very_negative_mean_logps() -> None:
    rows = [
        {"pw": -3e-6, "lw": 3, "pl": -500.0, "ll": 10, "refw": 0.0, "refl": 0.0},  # ℓ̄ ≈ 0⁻ and −50
        {"pw": 1e-7, "lw": 1, "pl": -1e-4, "ll": 1, "refw": 0.0, "refl": 0.0},  # rounding pushed ℓ̄ above 0
        {"pw": -3000.0, "lw": 2, "pl": -0.5, "ll": 1, "refw": 0.0, "refl": 0.0},  # ℓ̄_w = −1500
    ]
    inputs = make_inputs(rows, requires_grad=True)
    losses = preference_loss("orpo", LossParams(beta=0.1), inputs).losses
    assert torch.isfinite(losses).all()
    # Row 0 against float64: NLL 1e-6 − 0.1·log σ(log-odds(−1e-6) − log-odds(−50)).
    expected_row0 = 1e-6 - 0.1 * logsig(log_odds(-1e-6) - log_odds(-50.0))
    assert losses[0].item() == pytest.approx(expected_row0, rel=1e-4)
    losses.sum().backward()
    for grad in (inputs.policy_chosen_logps.grad, inputs.policy_rejected_logps.grad):  # type: ignore[union-attr]
        assert grad is not None and torch.isfinite(grad).all()


# ---------------------------------------------------------------- KTO


def kto_inputs(
    policy: list[float],
    reference: list[float],
    desirable: list[bool],
    kl_policy: list[float] | None = None,
    kl_reference: list[float] | None = None,
) -> PreferenceInputs:
    return PreferenceInputs(
        policy_completion_logps=torch.tensor(policy, requires_grad=True),
        reference_completion_logps=torch.tensor(reference),
        completion_is_desirable=torch.tensor(desirable, dtype=torch.bool),
        completion_lengths=torch.full((len(policy),), 2),
        kl_policy_logps=None if kl_policy is None else torch.tensor(kl_policy),
        kl_reference_logps=None if kl_reference is None else torch.tensor(kl_reference),
    )


def test_kto_hand_computed() -> None:
    # r = (0.5, −1.0, 0.25); z₀ = max(0, mean(0.5, 0.1)) = 0.3; β = 0.5, w_d = 1, w_u = 1.5.
    inputs = kto_inputs(
        [-5.0, -6.0, -7.0], [-5.5, -5.0, -7.25], [True, False, True], [-8.0, -9.0], [-8.5, -9.1]
    )
    params = LossParams(beta=0.5, undesirable_weight=1.5)
    out = preference_loss("kto", params, inputs)
    expected = [1 - sig(0.5 * (0.5 - 0.3)), 1.5 * (1 - sig(0.5 * (0.3 + 1.0))), 1 - sig(0.5 * (0.25 - 0.3))]
    torch.testing.assert_close(out.losses, torch.tensor(expected))
    torch.testing.assert_close(out.chosen_rewards, torch.tensor([0.25, 0.125]))  # β·r of desirable rows
    torch.testing.assert_close(out.rejected_rewards, torch.tensor([-0.5]))
    assert out.metrics["kl"] == pytest.approx(0.3)
    assert out.metrics["count/desirable"] == 2.0 and out.metrics["count/undesirable"] == 1.0
    with_nll = preference_loss("kto", LossParams(beta=0.5, undesirable_weight=1.5, nll_weight=0.2), inputs)
    # NLL only on desirable rows: −ℓ/|y| = 2.5 and 3.5.
    torch.testing.assert_close(with_nll.losses, torch.tensor(expected) + torch.tensor([0.5, 0.0, 0.7]))


def test_kto_reference_point_is_clamped_at_zero() -> None:
    inputs = kto_inputs([-5.0, -6.0], [-5.5, -5.0], [True, False], [-9.0], [-8.0])  # mean KL −1 -> z₀ = 0
    out = preference_loss("kto", LossParams(beta=0.5), inputs)
    # r = (0.5, −1.0): desirable 1 − σ(β(r − 0)), undesirable 1 − σ(β(0 − r)).
    torch.testing.assert_close(out.losses, torch.tensor([1 - sig(0.25), 1 - sig(0.5)]))
    assert out.metrics["kl"] == 0.0


@pytest.mark.parametrize(
    ("desirable", "kl_policy", "kl_reference"),
    [
        ([True, True], [-1.0, -2.0], [-1.5, -2.0]),
        ([False, False], [-1.0, -2.0], [-1.5, -2.0]),
        ([True, False], [], []),
        ([True, False], None, None),
        ([], [-1.0], [-2.0]),
    ],
)
def test_kto_degenerate_batches_stay_finite(
    desirable: list[bool], kl_policy: list[float] | None, kl_reference: list[float] | None
) -> None:
    n = len(desirable)
    inputs = kto_inputs([-3.0, -4.0][:n], [-3.5, -3.0][:n], desirable, kl_policy, kl_reference)
    out = preference_loss("kto", LossParams(beta=0.5, nll_weight=0.1), inputs)
    assert out.losses.shape == (n,) and torch.isfinite(out.losses).all()
    assert all(math.isfinite(value) for value in out.metrics.values())
    assert ("rewards/chosen" in out.metrics) == any(desirable)
    assert ("rewards/rejected" in out.metrics) == (not all(desirable))
    out.losses.sum().backward()
    grad = inputs.policy_completion_logps.grad  # type: ignore[union-attr]
    assert grad is not None and torch.isfinite(grad).all()


def test_kto_empty_kl_means_zero_reference_point() -> None:
    out = preference_loss(
        "kto", LossParams(beta=0.5), kto_inputs([-3.0, -4.0], [-3.5, -3.0], [True, False], [], [])
    )
    torch.testing.assert_close(out.losses, torch.tensor([1 - sig(0.25), 1 - sig(0.5)]))


def test_kto_input_checks() -> None:
    inputs = kto_inputs([-3.0], [-3.5], [True])
    inputs.completion_is_desirable = torch.tensor([0.7])
    with pytest.raises(ValueError, match="completion_is_desirable must be bool"):
        preference_loss(LossType.KTO, LossParams(), inputs)
    inputs = kto_inputs([-3.0], [-3.5], [True], [-1.0], None)
    with pytest.raises(ValueError, match="given together"):
        preference_loss(LossType.KTO, LossParams(), inputs)
    inputs = kto_inputs([-3.0], [-3.5], [True])
    inputs.reference_completion_logps = None
    with pytest.raises(ValueError, match="reference_completion_logps is required by kto"):
        preference_loss(LossType.KTO, LossParams(), inputs)
    paired_only = make_inputs()
    with pytest.raises(ValueError, match="policy_completion_logps is required"):
        preference_loss(LossType.KTO, LossParams(), paired_only)
    assert len(ROWS) == 2  # the shared fixture this module builds on
