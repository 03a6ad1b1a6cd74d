"""The trade-off script's measures, against hand-computed values: the normalised distance to the ideal point, the
per-objective cost ratio over sequential, MAXRIGHT's refresh-step overhead, and the
win-rate-vs-time points."""

from __future__ import annotations

import json
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


def test_normalised_distance_is_undefined_when_a_single_objective_run_never_beat_the_base() -> None:
    # the preference-only run's best held-out loss is the base's own step-0 value: no range to scale by
    ideal, base = (1.642, 0.6931), (1.681, 0.6931)
    assert tradeoff.normalised_distance((1.66, 0.6968), ideal, base) is None
    assert tradeoff.undefined_axes(ideal, base) == ["preference"]
    assert tradeoff.undefined_axes((1.5, 0.6), (2.0, 0.7)) == []


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
    rows: list[dict[str, Any]] = [
        {"method": "only-sft", "lambda": None, "train_s": 240.0, "win_rate": 0.3},  # vs AlpacaEval's references
        {"method": "only-preference", "lambda": None, "train_s": 300.0},  # not judged
        {"method": "alright", "lambda": 0.25, "train_s": 120.0, "win_rate": 0.55, "win_low": 0.45, "win_high": 0.65},
    ]
    assert tradeoff.win_rate_points(rows) == [("only-sft", 4.0, 0.5, 0.5, 0.5), ("alright λ=0.25", 2.0, 0.55, 0.45, 0.65)]


def test_point_styles_give_one_colour_per_method_and_one_marker_per_weight() -> None:
    rows: list[dict[str, Any]] = [{"method": m, "lambda": w} for m in ("alright", "mix") for w in (0.75, 0.25)]
    rows += [{"method": "only-sft", "lambda": None}, {"method": "interpolate", "lambda": 0.5}]
    styles = tradeoff.point_styles(rows)
    assert styles["alright λ=0.25"]["color"] == styles["alright λ=0.75"]["color"] != styles["mix λ=0.25"]["color"]
    assert styles["alright λ=0.25"]["marker"] == styles["mix λ=0.25"]["marker"] != styles["mix λ=0.75"]["marker"]
    assert styles["interpolate α=0.5"]["marker"] not in {styles["mix λ=0.25"]["marker"], styles["mix λ=0.75"]["marker"]}
    assert set(styles) == {"alright λ=0.25", "alright λ=0.75", "mix λ=0.25", "mix λ=0.75", "only-sft",
                           "interpolate α=0.5"}


def test_loss_space_points_are_training_trajectories_and_single_interpolated_points() -> None:
    evals = [{"eval/sft_loss": 2.0, "eval/pref_loss": 0.7}, {"eval/sft_loss": 1.8, "eval/pref_loss": 0.6}]
    rows = [{"method": "alright", "lambda": 0.5, "sft_loss": 1.8, "pref_loss": 0.6},
            {"method": "interpolate", "lambda": 0.25, "sft_loss": 1.9, "pref_loss": 0.65}]
    points = tradeoff.loss_space_points(rows, {"alright-0.5": evals})
    assert points == {"alright λ=0.5": evals, "interpolate α=0.25": [{"eval/sft_loss": 1.9, "eval/pref_loss": 0.65}]}


def test_the_report_plots_draw_every_point_of_a_sweep(tmp_path: Path) -> None:
    rows: list[dict[str, Any]] = [
        {"method": "only-sft", "lambda": None, "train_s": 60.0, "win_rate": 0.3, "sft_loss": 1.6, "pref_loss": 0.7},
        {"method": "alright", "lambda": 0.5, "train_s": 30.0, "win_rate": 0.55, "win_low": 0.45, "win_high": 0.65,
         "sft_loss": 1.7, "pref_loss": 0.68},
        {"method": "interpolate", "lambda": 0.5, "train_s": 0.0, "win_rate": 0.5, "win_low": 0.4, "win_high": 0.6,
         "sft_loss": 1.65, "pref_loss": 0.69},
    ]
    evals = [{"eval/sft_loss": 1.8, "eval/pref_loss": 0.7}, {"eval/sft_loss": 1.7, "eval/pref_loss": 0.68}]
    points = tradeoff.loss_space_points(rows, {"only-sft": evals[:1], "alright-0.5": evals})
    assert list(points) == ["only-sft", "alright λ=0.5", "interpolate α=0.5"]
    tradeoff.plot_loss_space(points, tmp_path / "loss.png", ideal=(1.6, 0.6), styles=tradeoff.point_styles(rows))
    tradeoff.plot_win_rate_vs_time(rows, tmp_path / "win.png")
    assert (tmp_path / "loss.png").stat().st_size > 1000 and (tmp_path / "win.png").stat().st_size > 1000


def test_sweep_best_takes_each_axis_minimum_over_every_evaluation_and_final_point() -> None:
    evals = [{"eval/sft_loss": 1.68, "eval/pref_loss": 0.6931}, {"eval/sft_loss": 1.64, "eval/pref_loss": 0.6971}]
    results = {"only-sft": {"evals": evals}, "only-preference": {"evals": [evals[0] | {"eval/sft_loss": 1.67}]}}
    # an interpolated model's point (no training evaluations) beats every run on preference
    assert tradeoff.sweep_best(results, [{"sft_loss": 1.66, "pref_loss": 0.6896}]) == (1.64, 0.6896)
    # with the base as the only preference minimum the utopia sits on the base on that axis: distance undefined
    utopia = tradeoff.sweep_best(results, [])
    assert utopia == (1.64, 0.6931)
    assert tradeoff.normalised_distance((1.66, 0.70), utopia, (1.68, 0.6931)) is None


def test_a_small_sweep_on_the_embedded_world_reports_both_distances(tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """The script end to end: single objectives, one sequential and one ALRIGHT run, no judge; the table and the
    JSON carry both distances, and the utopia point is the best of every evaluation on each axis."""
    root = tmp_path / "sweep"
    monkeypatch.setattr(sys, "argv", ["tradeoff.py", "stage.progress=false", "--run-dir", str(root), "--world", "ci",
                                      "--steps", "12", "--eval-every", "4", "--nll-weight", "0", "--lambdas", "0.5",
                                      "--methods", "sequential", "alright", "--alphas"])
    tradeoff.main()
    report = json.loads((root / "tradeoff.json").read_text())
    assert [r["method"] for r in report["rows"]] == ["only-sft", "only-preference", "sequential", "alright"]
    evals = [json.loads(line) for name in ("only-sft", "only-preference", "sequential-0.5", "alright-0.5")
             for line in (root / name / "round_00" / "joint_train" / "logs" / "metrics.jsonl").read_text().splitlines()]
    evals = [e for e in evals if "eval/sft_loss" in e]
    assert report["utopia"] == [min(e["eval/sft_loss"] for e in evals), min(e["eval/pref_loss"] for e in evals)]
    for r in report["rows"]:
        expected = tradeoff.normalised_distance((r["sft_loss"], r["pref_loss"]), report["utopia"], report["base"])
        assert expected is not None and r["dist_utopia"] == pytest.approx(expected)
    text = (root / "tradeoff.md").read_text()
    assert "| dist_norm | dist_utopia |" in text and "utopia point of the sweep" in text


def test_heldout_rows_evaluate_every_point_and_the_base_again_without_retraining(tmp_path: Path,
                                                                                 monkeypatch: pytest.MonkeyPatch
                                                                                 ) -> None:
    """``--heldout-rows``: the table's losses are each point's evaluate artifact on the larger sets; the base's
    preference loss is log 2 (the policy is the reference); the ideal point is each single-objective run's final
    loss or the base's, whichever is lower; the reference log-probs are computed once and then served."""
    root = tmp_path / "sweep"
    args = ["tradeoff.py", "stage.progress=false", "--run-dir", str(root), "--world", "ci", "--steps", "4",
            "--eval-every", "4", "--eval-rows", "8", "--nll-weight", "0", "--lambdas", "0.5", "--methods", "alright",
            "--alphas"]
    monkeypatch.setattr(sys, "argv", args)
    tradeoff.main()
    trained = {name: json.loads((root / name / "round_00" / "joint_train" / "manifest.json").read_text())
               for name in ("only-sft", "only-preference", "alright-0.5")}
    monkeypatch.setattr(sys, "argv", [*args, "--heldout-rows", "24"])
    tradeoff.main()
    report = json.loads((root / "tradeoff.json").read_text())

    def heldout(name: str) -> dict[str, Any]:
        found = json.loads((root / f"heldout-{name}" / "round_00" / "evaluate" / "eval.json").read_text())["results"]
        return {suite: next(iter(per_model.values())) for suite, per_model in found.items()}

    base = heldout("base")
    assert base["sft_loss"]["rows"] == 24 and base["preference"]["pairs"] == 24
    assert base["preference"]["pref_loss"] == pytest.approx(math.log(2), abs=1e-5)
    assert report["base"] == [base["sft_loss"]["sft_loss"], base["preference"]["pref_loss"]]
    for r, name in zip(report["rows"], ("only-sft", "only-preference", "alright-0.5"), strict=True):
        assert (r["sft_loss"], r["pref_loss"]) == (heldout(name)["sft_loss"]["sft_loss"],
                                                   heldout(name)["preference"]["pref_loss"])
        assert heldout(name)["preference"]["reference_cache"]["rows_computed"] == 0  # the base's pass stored them
        # no run retrained: the manifests are the first invocation's
        assert json.loads((root / name / "round_00" / "joint_train" / "manifest.json").read_text()) == trained[name]
    rows = {r["method"]: r for r in report["rows"]}
    assert report["ideal"] == [min(report["base"][0], rows["only-sft"]["sft_loss"]),
                               min(report["base"][1], rows["only-preference"]["pref_loss"])]
    assert "held-out losses on 24 rows of each set" in (root / "tradeoff.md").read_text()
