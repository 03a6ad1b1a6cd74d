"""Bilevel selector math on hand-computed cases, keep rules, AUROC, and the penalty loop on a toy problem."""

from __future__ import annotations

import re
from typing import Any

import pytest
import torch

from alignment.filtering.bilevel import BilevelSettings, train_selector
from alignment.filtering.selection import auroc, auroc_by_kind, keep_mask, noise_labels, selection_quality
from alignment.filtering.selector import (
    Selector,
    model_objective,
    rho_at_epoch,
    selection_weights,
    selector_objective,
)


def test_weights_start_at_one_and_follow_their_formulas() -> None:
    z = torch.tensor([0.0, torch.log(torch.tensor(3.0)).item()])
    # softmax: N·e^z/Σe^z = 2·[1, 3]/4
    torch.testing.assert_close(selection_weights(z, "softmax"), torch.tensor([0.5, 1.5]))
    # sigmoid: 2σ(ln 3) = 2·3/4
    torch.testing.assert_close(selection_weights(z, "sigmoid"), torch.tensor([1.0, 1.5]))
    for activation in ("softmax", "sigmoid"):
        torch.testing.assert_close(Selector(["a", "b", "c"], activation).weights(), torch.ones(3))
    with pytest.raises(ValueError, match="activation"):
        selection_weights(z, "relu")


def test_selector_keys_logits_by_row_id() -> None:
    selector = Selector(["x", "y", "x", "z"])
    assert selector.ids == ["x", "y", "z"]  # a repeated id shares one logit
    assert selector.indices(["z", "x"]).tolist() == [2, 0]
    with pytest.raises(KeyError, match="'w' is not a candidate"):
        selector.indices(["w"])


def _selector_grad(activation: str, upper: list[float], proxy: list[float] | None) -> list[float]:
    selector = Selector(["a", "b"], activation)
    weights = selector.weights()[selector.indices(["a", "b"])]
    proxy_losses = None if proxy is None else torch.tensor(proxy)
    selector_objective(weights, torch.tensor(upper), proxy_losses).backward()
    assert selector.logits.grad is not None
    return selector.logits.grad.tolist()


def test_penalty_gradient_with_and_without_the_value_function_term() -> None:
    # z = 0, N = B = 2. softmax: ∂w_a/∂z_a = 2·s(1-s) = 0.5, ∂w_b/∂z_a = -2·s·s = -0.5, so
    # ∂/∂z_a mean(w·d) = (0.5·d_a - 0.5·d_b)/2 = (d_a - d_b)/4.
    # Row a is hard for both models (ℓ=3, ℓ'=3); row b is one only the proxy fits (ℓ=2, ℓ'=0.5).
    upper, proxy = [3.0, 2.0], [3.0, 0.5]
    assert _selector_grad("softmax", upper, None) == pytest.approx([0.25, -0.25])
    assert _selector_grad("softmax", upper, proxy) == pytest.approx([-0.375, 0.375])
    # sigmoid: ∂w_j/∂z_j = 2·σ'(0) = 0.5, so ∂/∂z_j = 0.5·d_j/2
    assert _selector_grad("sigmoid", upper, None) == pytest.approx([0.75, 0.5])
    assert _selector_grad("sigmoid", upper, proxy) == pytest.approx([0.0, 0.375])
    # Theory: without v the hard row a loses weight (descent lowers z_a); with v the row only the proxy can fit
    # loses it and the hard-but-consistent row gains.


def test_batch_baseline_compares_rows_within_their_batch() -> None:
    # N = 4 rows at z = 0, batch (a, b) with gaps d = [3, 1]. softmax: ∂w_b/∂z_j = δ_bj - 1/4, so
    # ∂/∂z_j mean_b(w_b·d_b) = (1/2)·Σ_b d_b·(δ_bj - 1/4).
    def grad(center: bool) -> list[float]:
        selector = Selector(["a", "b", "c", "d"])
        weights = selector.weights()[selector.indices(["a", "b"])]
        selector_objective(weights, torch.tensor([3.0, 1.0]), None, center=center).backward()
        assert selector.logits.grad is not None
        return selector.logits.grad.tolist()

    # raw gaps: a = (3·0.75 - 0.25)/2 = 1, b = (-0.75 + 0.75)/2 = 0, unseen c, d = -(3 + 1)/8 = -0.5: descent
    # raises the unseen rows above b, the better row of the batch, only because every gap is positive
    assert grad(center=False) == pytest.approx([1.0, 0.0, -0.5, -0.5])
    # centred gaps [1, -1]: a = (0.75 + 0.25)/2 = 0.5, b = -0.5, unseen rows 0
    assert grad(center=True) == pytest.approx([0.5, -0.5, 0.0, 0.0])


def test_model_objective_mixes_golden_and_weighted_candidate_losses() -> None:
    golden, candidate = torch.tensor([1.0, 3.0]), torch.tensor([2.0, 4.0], requires_grad=True)
    weights = torch.tensor([0.5, 1.5], requires_grad=True)
    value = model_objective(0.25, golden, candidate, weights)
    # 0.25·2 + 0.75·(1 + 6)/2
    assert value.item() == pytest.approx(0.5 + 0.75 * 3.5)
    value.backward()
    assert weights.grad is None  # z does not move in the model step


def test_rho_schedule_decreases_per_epoch_to_its_floor() -> None:
    assert [rho_at_epoch(e, 0.9, 0.1) for e in range(3)] == pytest.approx([0.9, 0.8, 0.7])
    assert rho_at_epoch(20, 0.9, 0.1, rho_min=0.5) == 0.5
    with pytest.raises(ValueError):
        rho_at_epoch(-1, 0.9, 0.1)


def test_keep_rules() -> None:
    weights = [0.2, 1.5, 0.9, 1.5, 1.1]
    # top 60% of 5 = 3 rows; the tie at 1.5 keeps both
    assert keep_mask(weights, "top_p", fraction=0.6) == [False, True, False, True, True]
    # ceil(0.5·5) = 3, tie at the cut broken by row order
    assert keep_mask([1.0, 1.0, 1.0, 1.0, 1.0], "top_p", fraction=0.5) == [True, True, True, False, False]
    assert keep_mask(weights, "threshold", threshold=1.0) == [False, True, False, True, True]
    assert sum(keep_mask([float(i) for i in range(10)], "top_p", fraction=0.7)) == 7
    with pytest.raises(ValueError, match="fraction"):
        keep_mask(weights, "top_p", fraction=0.0)
    with pytest.raises(ValueError, match="keep rule"):
        keep_mask(weights, "random")


def test_auroc_counts_pairs_and_half_ties() -> None:
    assert auroc([0.9, 0.8, 0.1, 0.2], [True, True, False, False]) == 1.0
    assert auroc([0.1, 0.2, 0.9, 0.8], [True, True, False, False]) == 0.0
    # pairs (pos, neg): (0.5,0.5) tie = ½, (0.5,0.1) win, (0.3,0.5) loss, (0.3,0.1) win -> 2.5/4
    assert auroc([0.5, 0.3, 0.5, 0.1], [True, True, False, False]) == pytest.approx(0.625)
    with pytest.raises(ValueError, match="positive and one negative"):
        auroc([0.1, 0.2], [True, True])


def test_auroc_by_kind_scores_each_noise_kind_against_the_clean_rows() -> None:
    weights = [2.0, 1.0, 0.5, 1.5, 0.1]
    corrupted = [False, False, True, True, True]
    kinds = [None, None, "mismatch", "near_miss", "mismatch"]
    # mismatch rows (0.5, 0.1) are below both clean rows: 1; the near miss (1.5) beats one of two clean rows: 1/2
    assert auroc_by_kind(weights, corrupted, kinds) == {"mismatch": 1.0, "near_miss": 0.5}
    # unnamed kinds pool together: clean 2.0 beats all three, clean 1.0 beats two -> 5/6
    assert auroc_by_kind(weights, corrupted, [None] * 5) == {"unknown": pytest.approx(5 / 6)}


def test_selection_quality_and_noise_labels() -> None:
    quality = selection_quality([2.0, 1.5, 0.1, 1.0], kept=[True, True, False, True],
                                corrupted=[False, False, True, True])
    assert quality.auroc == 1.0
    assert quality.precision == pytest.approx(2 / 3) and quality.recall == 1.0 and quality.kept == 3
    assert noise_labels([{"corrupted": True}, {"corrupted": False}]) == [True, False]
    assert noise_labels([{"corrupted": True}, {}]) is None


class _Stream:
    """Shuffled batches of a toy classification set, forever."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor, ids: list[str], batch_size: int, seed: int):
        self.x, self.y, self.ids, self.batch_size = x, y, ids, batch_size
        self.generator = torch.Generator().manual_seed(seed)
        self.order: list[int] = []

    def next(self) -> dict:
        if len(self.order) < self.batch_size:
            self.order = torch.randperm(len(self.ids), generator=self.generator).tolist()
        chosen, self.order = self.order[: self.batch_size], self.order[self.batch_size:]
        return {"x": self.x[chosen], "y": self.y[chosen], "ids": [self.ids[i] for i in chosen]}


def _toy_losses(model: torch.nn.Module, batch: dict) -> torch.Tensor:
    return torch.nn.functional.cross_entropy(model(batch["x"]), batch["y"], reduction="none")


def _toy_problem(seed: int = 0) -> tuple[tuple, tuple, list[bool]]:
    """Two Gaussian classes; a clean golden set and 200 candidates with 30% flipped labels."""
    generator = torch.Generator().manual_seed(seed)

    def sample(n: int) -> tuple[torch.Tensor, torch.Tensor]:
        y = torch.randint(0, 2, (n,), generator=generator)
        x = torch.randn(n, 8, generator=generator) + (2 * y[:, None] - 1) * 1.5
        return x, y

    golden = sample(64)
    x, y = sample(200)
    flipped = torch.zeros(200, dtype=torch.bool)
    flipped[torch.randperm(200, generator=generator)[:60]] = True
    return golden, (x, torch.where(flipped, 1 - y, y)), flipped.tolist()


def _train_toy(settings: BilevelSettings, activation: str = "softmax") -> tuple[Any, Selector, list[str], list[bool]]:
    """The bilevel loop on the toy problem from a seeded θ = θ'; returns the result, selector, ids, noise labels."""
    torch.manual_seed(0)
    (gx, gy), (cx, cy), corrupted = _toy_problem()
    ids = [f"row{i}" for i in range(len(cy))]
    model = torch.nn.Linear(8, 2)
    proxy = torch.nn.Linear(8, 2)
    proxy.load_state_dict(model.state_dict())
    selector = Selector(ids, activation)
    result = train_selector(model, proxy, selector, _Stream(gx, gy, [f"g{i}" for i in range(64)], 8, 1),
                            _Stream(cx, cy, ids, 16, 2), _toy_losses, settings)
    return result, selector, ids, corrupted


def test_the_selection_loop_shows_a_bar_over_its_steps(capsys: pytest.CaptureFixture[str]) -> None:
    (gx, gy), (cx, cy), _ = _toy_problem()
    ids = [f"row{i}" for i in range(len(cy))]
    settings = BilevelSettings(steps=5, steps_per_epoch=13, value_function=False)
    train_selector(torch.nn.Linear(8, 2), None, Selector(ids), _Stream(gx, gy, [f"g{i}" for i in range(64)], 8, 1),
                   _Stream(cx, cy, ids, 16, 2), _toy_losses, settings, progress=True)
    assert re.search(r"bilevel selection: 100%.*5/5.*rho=0.90", capsys.readouterr().err)


def _run_toy(value_function: bool, activation: str = "softmax") -> tuple[list[float], list[bool]]:
    settings = BilevelSettings(steps=60, steps_per_epoch=13, lr=0.05, proxy_lr=0.05, selector_lr=0.1,
                               rho=0.9, rho_decay=0.1, value_function=value_function)
    result, selector, ids, corrupted = _train_toy(settings, activation)
    assert result.steps == 60 and result.history[-1]["rho"] == pytest.approx(0.5)
    weights = selector.weight_map()
    return [weights[i] for i in ids], corrupted


@pytest.mark.parametrize("activation", ["softmax", "sigmoid"])
def test_penalty_loop_separates_flipped_labels(activation: str) -> None:
    weights, corrupted = _run_toy(value_function=True, activation=activation)
    assert auroc(weights, [not c for c in corrupted]) >= 0.9


def test_value_function_term_changes_the_weights() -> None:
    with_v, corrupted = _run_toy(value_function=True)
    without_v, _ = _run_toy(value_function=False)
    assert max(abs(a - b) for a, b in zip(with_v, without_v, strict=True)) > 0.05
    # both still rank flipped rows low: the v term subtracts what the proxy fits, it does not invert the signal
    assert auroc(without_v, [not c for c in corrupted]) >= 0.9


def test_value_term_uses_the_proxy_after_its_step() -> None:
    # θ' starts equal to θ, so before its first update the gap ℓ(θ) - ℓ(θ') is 0 for every row and the selector
    # would not move; after the update it is what one proxy step fits of each row.
    settings = BilevelSettings(steps=1, steps_per_epoch=13, lr=0.05, proxy_lr=0.05, selector_lr=1.0,
                               selector_optimizer="sgd", log_every=1)
    result, selector, _, _ = _train_toy(settings)
    record = result.history[0]
    assert record["proxy_loss_after"] < record["proxy_loss"]
    moved = selector.logits.detach().abs()
    assert int((moved > 1e-6).sum()) == 16  # the batch rows moved; centred softmax leaves the others at 0


def test_value_function_needs_a_proxy() -> None:
    settings = BilevelSettings(steps=1, steps_per_epoch=1)
    with pytest.raises(ValueError, match="proxy"):
        train_selector(torch.nn.Linear(2, 2), None, Selector(["a"]), _Stream(torch.zeros(1, 2), torch.zeros(
            1, dtype=torch.long), ["a"], 1, 0), _Stream(torch.zeros(1, 2), torch.zeros(1, dtype=torch.long),
                                                        ["a"], 1, 0), _toy_losses, settings)
