"""The trade-off script's measures, against hand-computed values: the normalised distance to the ideal point, the
per-objective cost ratio over sequential, MAXRIGHT's refresh-step overhead, and the
win-rate-vs-time points."""

from __future__ import annotations

import math
import sys
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
import tradeoff  # noqa: E402  (a script beside its helper module experiments.py)


def test_normalised_distance_puts_the_base_at_one_one_and_the_ideal_at_the_origin() -> None:
    ideal, base = (1.5, 0.6), (2.0, 0.7)
    assert tradeoff.normalised_distance(base, ideal, base) == pytest.approx(math.sqrt(2))
    assert tradeoff.normalised_distance(ideal, ideal, base) == 0.0
    # (1.75 − 1.5) / 0.5 = 0.5 and (0.61 − 0.6) / 0.1 = 0.1
    assert tradeoff.normalised_distance((1.75, 0.61), ideal, base) == pytest.approx(math.hypot(0.5, 0.1))


def run(step_seconds: dict[str, float], objective_steps: dict[str, int], seconds_per_step: float = 0.0
        ) -> dict[str, Any]:
    return {"step_seconds": step_seconds, "objective_steps": objective_steps,
            "metrics": {"seconds_per_step": seconds_per_step}}


def test_cost_ratio_prices_each_method_s_own_objective_steps_at_sequential_s_rate() -> None:
    results = {
        "sequential-0.5": run({"0": 10.0, "1": 20.0}, {"0": 2, "1": 2}),
        # 3 SFT steps at 11 s and 1 preference step at 22 s: 55 s against 3·10 + 1·20 = 50 s at sequential's rate
        "alright-0.5": run({"0": 11.0, "1": 22.0}, {"0": 3, "1": 1}),
        "maxright-0.5": run({"1": 18.0}, {"1": 4}),  # preference only: 18 s against 20 s
        "mix-0.5": run({"0": 30.0}, {"0": 4}, seconds_per_step=30.0),  # both every step: 30 s over mean(10, 20)
    }
    ratios = tradeoff.cost_ratios(results, 0.5)
    assert ratios == pytest.approx({"alright": 55 / 50, "maxright": 0.9, "mix": 2.0})
    # a sweep run with --methods sequential maxright prices only what it ran; without sequential, nothing
    subset = {k: v for k, v in results.items() if k.startswith(("sequential", "maxright"))}
    assert tradeoff.cost_ratios(subset, 0.5) == pytest.approx({"maxright": 0.9})
    assert tradeoff.cost_ratios({"maxright-0.5": results["maxright-0.5"]}, 0.5) == {}


def step(seconds: float, refreshed: bool) -> dict[str, float]:
    """One logged training step; a refresh step carries the refreshed losses."""
    record = {"train/step_seconds": seconds, "train/objective": 0.0}
    return record | ({"train/refresh_sft_loss": 1.0, "train/refresh_preference_loss": 0.7} if refreshed else {})


def test_refresh_extra_seconds_is_each_refresh_step_over_the_median_plain_step() -> None:
    steps = [step(20.0, True), step(10.0, False), step(12.0, False), step(15.0, True), step(11.0, False)]
    assert tradeoff.refresh_extra_seconds(steps) == pytest.approx([9.0, 4.0])  # median of 10, 12, 11 is 11
    assert tradeoff.refresh_extra_seconds([step(20.0, True)]) == []  # nothing to compare with


def test_refresh_overhead_is_the_extra_seconds_over_a_run_of_median_plain_steps() -> None:
    steps = [step(20.0, True), step(10.0, False), step(12.0, False), step(15.0, True), step(11.0, False)]
    assert tradeoff.refresh_overhead(steps) == pytest.approx((9.0 + 4.0) / (11.0 * 5))
    assert tradeoff.refresh_overhead([step(10.0, False)]) is None  # no refresh: not MAXRIGHT


def test_win_rate_points_put_the_sft_only_reference_at_one_half_and_skip_unjudged_rows() -> None:
    rows = [
        {"method": "only-sft", "lambda": None, "train_s": 240.0, "win_rate": 0.3},  # vs AlpacaEval's references
        {"method": "only-preference", "lambda": None, "train_s": 300.0},  # not judged
        {"method": "alright", "lambda": 0.25, "train_s": 120.0, "win_rate": 0.55},
    ]
    assert tradeoff.win_rate_points(rows) == [("only-sft (the reference)", 4.0, 0.5), ("alright λ=0.25", 2.0, 0.55)]
