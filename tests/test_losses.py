"""Tests for alignment.losses: paired reference losses, limits, rewards, metrics, params and input checks.

Expected values are written out with the math module on two example pairs (see ROWS), never by calling the
code under test. ORPO, SimPO, KTO and log1mexp live in tests/test_losses_kto_orpo_simpo.py.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable

import pytest
import torch

from alignment.logprobs import IGNORE_INDEX
from alignment.losses import (
    LossParams,
    LossType,
    PreferenceInputs,
    preference_loss,
    sft_loss,
    sft_token_loss_sum,
)

# Two pairs: summed log-probs (p = policy, ref = reference; w = chosen, l = rejected) and response lengths.
# Row 0: r_w = 1.0, r_l = -1.0, h = 2.0.  Row 1: r_w = 0.5, r_l = -1.0, h = 1.5.
ROWS = [
    {"pw": -10.0, "pl": -14.0, "refw": -11.0, "refl": -13.0, "lw": 4, "ll": 7},
    {"pw": -12.0, "pl": -11.0, "refw": -12.5, "refl": -10.0, "lw": 5, "ll": 2},
]


def logsig(x: float) -> float:
    """log σ(x) = −log(1 + e^{−x})."""
    return -math.log1p(math.exp(-x))


def sig(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x))


def rw(row: dict[str, float]) -> float:
    return row["pw"] - row["refw"]


def rl(row: dict[str, float]) -> float:
    return row["pl"] - row["refl"]


def make_inputs(
    rows: list[dict[str, float]] = ROWS, dtype: torch.dtype = torch.float32, requires_grad: bool = False
) -> PreferenceInputs:
    def column(key: str, grad: bool = False) -> torch.Tensor:
        return torch.tensor([row[key] for row in rows], dtype=dtype, requires_grad=grad)

    return PreferenceInputs(
        policy_chosen_logps=column("pw", requires_grad),
        policy_rejected_logps=column("pl", requires_grad),
        chosen_lengths=torch.tensor([row["lw"] for row in rows], dtype=torch.long),
        rejected_lengths=torch.tensor([row["ll"] for row in rows], dtype=torch.long),
        reference_chosen_logps=column("refw"),
        reference_rejected_logps=column("refl"),
    )


def expected_rows(formula: Callable[[dict[str, float]], float]) -> torch.Tensor:
    return torch.tensor([formula(row) for row in ROWS], dtype=torch.float32)


def run(loss_type: LossType | str, inputs: PreferenceInputs | None = None, **params: float) -> torch.Tensor:
    return preference_loss(loss_type, LossParams(**params), inputs or make_inputs()).losses


def test_dpo_hand_computed() -> None:
    expected = expected_rows(lambda r: -logsig(0.5 * (rw(r) - rl(r))))
    assert expected[0].item() == pytest.approx(math.log(1.0 + math.exp(-1.0)), rel=1e-6)  # βh = 1
    torch.testing.assert_close(run("dpo", beta=0.5), expected)


def test_cdpo_label_smoothing_hand_computed() -> None:
    def cdpo(r: dict[str, float]) -> float:
        z = 0.5 * (rw(r) - rl(r))
        return -0.9 * logsig(z) - 0.1 * logsig(-z)

    torch.testing.assert_close(run(LossType.DPO, beta=0.5, label_smoothing=0.1), expected_rows(cdpo))


def test_hinge_hand_computed() -> None:
    # β = 0.4: βh = 0.8 and 0.6 -> 0.2 and 0.4; β = 1: βh >= 1 -> 0 for both.
    torch.testing.assert_close(run("hinge", beta=0.4), torch.tensor([0.2, 0.4]))
    torch.testing.assert_close(run("hinge", beta=1.0), torch.tensor([0.0, 0.0]))


def test_ipo_uses_length_averaged_log_ratios() -> None:
    # β = 0.5 -> 1/(2β) = 1.  Row 0: 1/4 + 1/7; row 1: 0.5/5 + 1/2.
    expected = expected_rows(lambda r: (rw(r) / r["lw"] - rl(r) / r["ll"] - 1.0) ** 2)
    assert expected[1].item() == pytest.approx((0.1 + 0.5 - 1.0) ** 2)
    torch.testing.assert_close(run("ipo", beta=0.5), expected)


def test_robust_hand_computed() -> None:
    def rdpo(r: dict[str, float]) -> float:
        z = 0.5 * (rw(r) - rl(r))
        return (-0.8 * logsig(z) + 0.2 * logsig(-z)) / (1.0 - 0.4)

    torch.testing.assert_close(run("robust", beta=0.5, label_smoothing=0.2), expected_rows(rdpo))


def test_aipo_hand_computed() -> None:
    # z = Δπ − (1+α)Δref − γ; Δπ = (4, −1), Δref = (2, −2.5) -> z = (1.2, 2.05); NLL term λ·(−ℓ_w/|y_w|).
    def aipo(r: dict[str, float]) -> float:
        z = (r["pw"] - r["pl"]) - 1.3 * (r["refw"] - r["refl"]) - 0.2
        return -0.9 * logsig(0.5 * z) - 0.1 * logsig(-0.5 * z) + 0.7 * (-r["pw"] / r["lw"])

    expected = expected_rows(aipo)
    assert expected[0].item() == pytest.approx(-0.9 * logsig(0.6) - 0.1 * logsig(-0.6) + 0.7 * 2.5, rel=1e-6)
    params = LossParams(beta=0.5, alpha=0.3, gamma=0.2, aipo_lambda=0.7, label_smoothing=0.1)
    torch.testing.assert_close(preference_loss("aipo", params, make_inputs()).losses, expected)


def test_kto_pair_hand_computed_with_detached_kl() -> None:
    # KL_w = max(0, mean r_w) = 0.75, KL_l = max(0, mean r_l) = 0.
    def kto_pair(r: dict[str, float]) -> float:
        return (1 - sig(0.5 * (rw(r) - 0.0))) + (1 - sig(0.5 * (0.75 - rl(r))))

    inputs = make_inputs(requires_grad=True)
    losses = preference_loss("kto_pair", LossParams(beta=0.5), inputs).losses
    torch.testing.assert_close(losses, expected_rows(kto_pair))
    losses.sum().backward()
    # KL terms are detached: d/dℓ_w of row 0 comes only from its own chosen term.
    z = 0.5 * rw(ROWS[0])
    assert inputs.policy_chosen_logps is not None and inputs.policy_chosen_logps.grad is not None
    assert inputs.policy_chosen_logps.grad[0].item() == pytest.approx(-0.5 * sig(z) * (1 - sig(z)), rel=1e-5)


def test_sppo_hard_hand_computed() -> None:
    # β = 0.25 -> 1/(2β) = 2: row 0 (1−2)² + (−1+2)² = 2; row 1 (0.5−2)² + 1 = 3.25.
    torch.testing.assert_close(run("sppo_hard", beta=0.25), torch.tensor([2.0, 3.25]))


@pytest.mark.parametrize(
    ("loss_type", "formula"),
    [
        ("nca_pair", lambda a, b: -logsig(a) - 0.5 * logsig(-a) - 0.5 * logsig(-b)),
        ("bco_pair", lambda a, b: -logsig(a) - logsig(-b)),
        ("apo_zero", lambda a, b: (1 - sig(a)) + sig(b)),
        ("apo_down", lambda a, b: sig(a) + (1 - sig(a - b))),
    ],
)
def test_reward_pair_losses_hand_computed(loss_type: str, formula: Callable[[float, float], float]) -> None:
    # Each formula takes the scaled log-ratios β·r_w and β·r_l (β = 0.5).
    expected = expected_rows(lambda r: formula(0.5 * rw(r), 0.5 * rl(r)))
    torch.testing.assert_close(run(loss_type, beta=0.5), expected)


def test_nll_weight_adds_chosen_token_mean_nll() -> None:
    dpo = expected_rows(lambda r: -logsig(0.5 * (rw(r) - rl(r))))
    # Default NLL = −ℓ_w/|y_w| = (2.5, 2.4).
    torch.testing.assert_close(run("dpo", beta=0.5, nll_weight=0.3), dpo + 0.3 * torch.tensor([2.5, 2.4]))
    inputs = make_inputs()
    inputs.policy_chosen_nll_mean = torch.tensor([1.0, 2.0])  # e.g. measured over prompt + response
    out = preference_loss("dpo", LossParams(beta=0.5, nll_weight=0.3), inputs)
    torch.testing.assert_close(out.losses, dpo + 0.3 * torch.tensor([1.0, 2.0]))
    assert out.metrics["nll"] == pytest.approx(1.5)


def test_limits_reduce_to_dpo() -> None:
    generator = torch.Generator().manual_seed(3)
    rows = [
        {"pw": -float(a), "pl": -float(b), "refw": -float(c), "refl": -float(d), "lw": 3, "ll": 5}
        for a, b, c, d in (torch.rand(6, 4, generator=generator) * 20).tolist()
    ]
    inputs = make_inputs(rows)
    dpo = run("dpo", inputs, beta=0.3)
    torch.testing.assert_close(run("dpo", inputs, beta=0.3, label_smoothing=0.0), dpo)  # cDPO ε = 0
    torch.testing.assert_close(run("robust", inputs, beta=0.3, label_smoothing=0.0), dpo)
    torch.testing.assert_close(run("aipo", inputs, beta=0.3, alpha=0.0, gamma=0.0, aipo_lambda=0.0), dpo)
    assert not torch.allclose(run("aipo", inputs, beta=0.3, alpha=0.5), dpo)  # the limit is not trivial


def test_rewards_and_metrics_of_reference_losses() -> None:
    out = preference_loss("dpo", LossParams(beta=0.5), make_inputs())
    torch.testing.assert_close(out.chosen_rewards, torch.tensor([0.5, 0.25]))  # β·r_w
    torch.testing.assert_close(out.rejected_rewards, torch.tensor([-0.5, -0.5]))
    assert not out.chosen_rewards.requires_grad
    assert out.metrics["rewards/margins"] == pytest.approx((1.0 + 0.75) / 2)
    assert out.metrics["rewards/accuracies"] == 1.0
    assert out.metrics["logps/chosen"] == pytest.approx(-11.0)
    assert out.metrics["length/rejected"] == pytest.approx(4.5)
    aipo = preference_loss("aipo", LossParams(beta=0.5, alpha=0.1), make_inputs()).metrics
    assert aipo["margin/policy"] == pytest.approx(0.5 * (4.0 - 1.0) / 2)
    assert aipo["margin/reference"] == pytest.approx(0.5 * (2.0 - 2.5) / 2)


def test_losses_are_per_example_float32_for_bfloat16_inputs() -> None:
    # Every ROWS value is exact in bfloat16, so the bf16 path must give the float32 numbers.
    for loss_type in LossType:
        if not loss_type.paired:
            continue
        out = preference_loss(loss_type, LossParams(beta=0.5), make_inputs(dtype=torch.bfloat16))
        assert out.losses.shape == (2,) and out.losses.dtype == torch.float32
        torch.testing.assert_close(out.losses, run(loss_type, beta=0.5))


@pytest.mark.parametrize("loss_type", [t for t in LossType if t.paired])
def test_gradients_flow_to_policy_log_probs(loss_type: LossType) -> None:
    inputs = make_inputs(requires_grad=True)
    params = LossParams(beta=0.5, nll_weight=0.1, aipo_lambda=0.2 if loss_type is LossType.AIPO else 0.0)
    preference_loss(loss_type, params, inputs).losses.sum().backward()
    for grad in (inputs.policy_chosen_logps.grad, inputs.policy_rejected_logps.grad):  # type: ignore[union-attr]
        assert grad is not None and torch.isfinite(grad).all()
    assert inputs.policy_chosen_logps.grad.abs().sum() > 0  # type: ignore[union-attr]


CAPABILITIES = {  # needs_reference, length_normalised, paired, uses_policy_nll
    LossType.DPO: (True, False, True, False),
    LossType.HINGE: (True, False, True, False),
    LossType.IPO: (True, True, True, False),
    LossType.ROBUST: (True, False, True, False),
    LossType.SIMPO: (False, True, True, False),
    LossType.ORPO: (False, True, True, True),
    LossType.KTO: (True, False, False, False),
    LossType.KTO_PAIR: (True, False, True, False),
    LossType.AIPO: (True, False, True, True),
    LossType.SPPO_HARD: (True, False, True, False),
    LossType.NCA_PAIR: (True, False, True, False),
    LossType.BCO_PAIR: (True, False, True, False),
    LossType.APO_ZERO: (True, False, True, False),
    LossType.APO_DOWN: (True, False, True, False),
}


@pytest.mark.parametrize("loss_type", list(LossType))
def test_capability_properties(loss_type: LossType) -> None:
    got = (
        loss_type.needs_reference,
        loss_type.length_normalised,
        loss_type.paired,
        loss_type.uses_policy_nll,
    )
    assert got == CAPABILITIES[loss_type]
    assert LossType(loss_type.value) is loss_type and LossParams().validate(loss_type) == []


@pytest.mark.parametrize(
    ("loss_type", "params", "fragment"),
    [
        ("robust", {"label_smoothing": 0.5}, "[0, 0.5)"),
        ("dpo", {"label_smoothing": 0.6}, "label_smoothing"),
        ("dpo", {"beta": 0.0}, "beta"),
        ("dpo", {"beta": float("nan")}, "finite"),
        ("hinge", {"label_smoothing": 0.1}, "not used by loss 'hinge'"),
        ("dpo", {"gamma": 0.5}, "gamma"),
        ("simpo", {"gamma": -1.0}, "gamma"),
        ("dpo", {"alpha": 0.5}, "alpha"),
        ("aipo", {"alpha": -2.0}, "alpha"),
        ("aipo", {"aipo_lambda": -0.1}, "aipo_lambda"),
        ("ipo", {"nll_weight": -1.0}, "nll_weight"),
        ("kto", {"desirable_weight": 0.0}, "desirable_weight"),
        ("dpo", {"undesirable_weight": 2.0}, "undesirable_weight"),
        ("sigmoid", {}, "unknown loss_type"),
    ],
)
def test_validate_reports_bad_params(loss_type: str, params: dict[str, float], fragment: str) -> None:
    problems = LossParams(**params).validate(loss_type)
    assert any(fragment in problem for problem in problems), problems
    with pytest.raises(ValueError, match=re.escape(fragment)):
        preference_loss(loss_type, LossParams(**params), make_inputs())


def test_validate_accepts_edge_values() -> None:
    assert LossParams(label_smoothing=0.49).validate("robust") == []
    assert LossParams(label_smoothing=0.5).validate("dpo") == []
    assert LossParams(alpha=-1.0, aipo_lambda=0.0, gamma=1.0).validate(LossType.AIPO) == []


def test_input_checks_name_the_field() -> None:
    inputs = make_inputs()
    inputs.reference_rejected_logps = None
    with pytest.raises(ValueError, match="reference_rejected_logps is required by dpo"):
        preference_loss("dpo", LossParams(), inputs)
    preference_loss("simpo", LossParams(), inputs)  # reference-free: no reference needed
    inputs = make_inputs()
    inputs.rejected_lengths = torch.tensor([3, 4, 5])
    with pytest.raises(ValueError, match="batch size"):
        preference_loss("dpo", LossParams(), inputs)
    inputs = make_inputs()
    inputs.policy_chosen_logps = torch.zeros(2, 1)
    with pytest.raises(ValueError, match="policy_chosen_logps must be 1-D"):
        preference_loss("dpo", LossParams(), inputs)


def test_sft_losses_per_example_and_batch_token_mean() -> None:
    # logits[:, t] predicts labels[:, t + 1]; the last position (huge logits) predicts nothing.
    logits = torch.tensor(
        [
            [[0.0, 0.0, 0.0], [1.0, 0.0, 0.0], [90.0, -90.0, 0.0]],
            [[5.0, 5.0, 5.0], [0.0, 0.0, math.log(2.0)], [-90.0, 90.0, 0.0]],
        ],
        requires_grad=True,
    )
    labels = torch.tensor([[IGNORE_INDEX, 0, 1], [IGNORE_INDEX, IGNORE_INDEX, 2]])
    row0_sum = math.log(3.0) + math.log(math.e + 2.0)  # −log(1/3) − log(e^0 / (e + 2))
    row1_sum = math.log(2.0)  # −log(2 / 4)
    per_example = sft_loss(logits, labels)
    torch.testing.assert_close(per_example, torch.tensor([row0_sum / 2.0, row1_sum]))
    summed = sft_token_loss_sum(logits, labels)
    torch.testing.assert_close(summed.loss_sum, torch.tensor([row0_sum, row1_sum]))
    assert summed.token_count.tolist() == [2, 1]
    batch_token_mean = summed.loss_sum.sum() / summed.token_count.sum()
    assert batch_token_mean.item() == pytest.approx((row0_sum + row1_sum) / 3.0, rel=1e-6)
    assert batch_token_mean.item() != pytest.approx(per_example.mean().item())  # the two conventions differ
    batch_token_mean.backward()
    assert logits.grad is not None and torch.isfinite(logits.grad).all()
