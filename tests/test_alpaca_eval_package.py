"""The optional ``alpaca_eval`` package's metric functions on our annotations, offline (the 'alpaca-eval' extra).

The tests that call the package are skipped where it is not installed; the one about a missing package is not.
"""

from __future__ import annotations

import csv
import json
import sys
from pathlib import Path
from typing import Any

import pytest

from alignment.evaluation.alpaca_eval_package import alpaca_eval_metrics, length_controlled_problem
from alignment.evaluation.win_rate import Matchup, annotation_rows, win_rate_summary

# P(model wins) per instruction, as judge_matchups gives them: both orders, ties half
WINS = [1.0, 0.75, 0.75, 0.5, 0.25, 0.0]


def _annotations(wins: list[float], model: str = "my-model", reference: str = "ref", with_index: bool = False,
                 longer_when_winning: bool = False) -> list[dict[str, Any]]:
    matchups = [Matchup(key=f"k{i}", instruction=f"q{i}", reference="r" * 100,
                        output="m" * (150 if longer_when_winning and w > 0.5 else 50 + i),
                        reference_generator=reference, index=i if with_index else None)
                for i, w in enumerate(wins)]
    return annotation_rows(matchups, wins, model, "scripted")


def test_a_missing_package_is_reported_for_both_numbers(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "alpaca_eval", None)  # what a venv without the extra sees
    found = alpaca_eval_metrics(_annotations(WINS))
    for part in ("win_rate", "length_controlled_win_rate"):
        assert found[part] == {"status": "unavailable: the alpaca_eval package is not installed "
                                         "(the 'alpaca-eval' extra)"}


def test_package_win_rate_equals_ours_on_the_same_annotations() -> None:
    pytest.importorskip("alpaca_eval")
    annotations = _annotations(WINS)
    ours = win_rate_summary(WINS, [a["output_2"] for a in annotations], resamples=50)
    found = alpaca_eval_metrics(annotations)
    package = found["win_rate"]
    # mean of preference - 1 = (1 + .75 + .75 + .5 + .25 + 0) / 6 = 3.25 / 6, in percent
    assert package["win_rate"] == pytest.approx(100 * 3.25 / 6)
    assert package["win_rate"] == pytest.approx(100 * ours["win_rate"]["value"])
    assert (package["n_wins"], package["n_draws"], package["n_wins_base"], package["n_total"]) == (
        ours["wins"], ours["ties"], ours["losses"], ours["n"]) == (3, 1, 2, 6)
    # the discrete rate rounds each preference first: 1.75 -> a win, 1.25 -> a loss: (3 + 0.5) / 6
    assert package["discrete_win_rate"] == pytest.approx(100 * 3.5 / 6)
    json.dumps(found)  # plain Python numbers, no numpy scalars
    assert "index" in found["length_controlled_win_rate"]["status"]
    assert found["length_controlled_win_rate"]["status"].startswith("unavailable: 6 of 6 annotations")


def test_a_model_against_its_own_outputs_is_50_length_controlled_without_any_inputs() -> None:
    pytest.importorskip("alpaca_eval")
    annotations = _annotations([0.5, 0.5, 0.5], model="same", reference="same")
    assert length_controlled_problem(annotations) is None
    found = alpaca_eval_metrics(annotations)
    assert found["length_controlled_win_rate"] == {"length_controlled_winrate": 50.0, "lc_standard_error": 0.0}
    assert found["win_rate"]["win_rate"] == 50.0


def test_length_controlled_inputs_that_are_missing_are_named(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("alpaca_eval")
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "empty_cache"))
    status = alpaca_eval_metrics(_annotations(WINS, with_index=True))["length_controlled_win_rate"]["status"]
    assert status.startswith("unavailable: it needs df_gamed.csv of the HF Hub dataset tatsu-lab/alpaca_eval")
    mixed = _annotations(WINS[:2], model="a") + _annotations(WINS[:2], model="b")
    assert "mix 2 models" in str(length_controlled_problem(mixed))


def _cache_gamed_annotations(cache: Path, instructions: int) -> None:
    """A synthetic ``df_gamed.csv`` in HF-cache layout: a concise baseline that loses, a verbose one that wins."""
    commit = "0" * 40
    repo = cache / "datasets--tatsu-lab--alpaca_eval"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    snapshot = repo / "snapshots" / commit
    snapshot.mkdir(parents=True)
    with open(snapshot / "df_gamed.csv", "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["model", "index", "instruction_difficulty", "preference", "std_delta_len",
                         "not_gamed_baseline"])
        for model, delta, preference in (("concise", 1.0, 0.2), ("verbose", -1.0, 0.8)):
            writer.writerows([model, i, (i % 5) / 5, preference, delta, False] for i in range(instructions))


def test_length_controlled_glm_runs_offline_and_discounts_wins_bought_by_length(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("alpaca_eval")
    from alpaca_eval.metrics import glm_winrate
    from huggingface_hub import constants

    _cache_gamed_annotations(tmp_path / "cache", instructions=12)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)  # as if HF_HUB_OFFLINE were unset
    offline_at_lookup: list[bool] = []
    real_download = glm_winrate.hf_hub_download

    def spy(*args: Any, **kwargs: Any) -> str:
        offline_at_lookup.append(constants.is_offline_mode())
        return real_download(*args, **kwargs)

    monkeypatch.setattr(glm_winrate, "hf_hub_download", spy)
    # the model is longer than the reference exactly where it wins: 9 of 12, a raw win rate of 75%
    annotations = _annotations([1.0, 1.0, 1.0, 0.0] * 3, with_index=True, longer_when_winning=True)
    found = alpaca_eval_metrics(annotations)
    assert offline_at_lookup == [True] and constants.HF_HUB_OFFLINE is False  # looked up offline, then restored
    assert found["win_rate"]["win_rate"] == 75.0
    # at equal lengths the fitted preference is nearer to 50 than the length-driven raw rate
    assert 50.0 < found["length_controlled_win_rate"]["length_controlled_winrate"] < 75.0
    json.dumps(found)
