"""Pair selection rules, tie handling, win-probability aggregation and pair rows, against hand-made scores."""

from __future__ import annotations

import pytest

from alignment.data.formats import parse_row
from alignment.data.rows import PreferenceRow
from alignment.ranking.base import scores_from_win_probs
from alignment.ranking.judge_prompts import parse_score, parse_verdict
from alignment.ranking.pairs import select_pairs
from alignment.ranking.pairwise import ordered_pairs, sigmoid, win_probs_from_logits
from alignment.ranking.records import build_pairs, candidate_id, pair_metrics

TEXTS = ["a", "bb", "ccc", "dddd"]


def as_tuples(pairs):  # noqa: ANN001, ANN201
    return [(p.chosen, p.rejected, round(p.margin, 6)) for p in pairs]


def test_best_vs_worst_picks_extremes_and_reports_the_margin() -> None:
    pairs, counts = select_pairs(TEXTS, [0.2, 0.9, -0.5, 0.1], "best_vs_worst")
    assert as_tuples(pairs) == [(1, 2, 1.4)]
    assert counts["candidate_pairs"] == 1 and counts["ties"] == 0


def test_all_pairs_orients_each_pair_and_drops_ties() -> None:
    pairs, counts = select_pairs(TEXTS[:3], [1.0, 0.0, 1.0], "all_pairs")
    assert as_tuples(pairs) == [(0, 1, 1.0), (2, 1, 1.0)]  # (0, 2) is a tie
    assert (counts["candidate_pairs"], counts["ties"]) == (3, 1)


def test_equal_scores_and_identical_texts_are_ties() -> None:
    pairs, counts = select_pairs(["x", "y"], [1.0, 1.0], "best_vs_worst")
    assert pairs == [] and counts["ties"] == 1 and counts["groups_without_pair"] == 1
    pairs, counts = select_pairs(["same ", "same"], [1.0, 0.0], "best_vs_worst")
    assert pairs == [] and counts["ties"] == 1


def test_min_margin_drops_close_pairs() -> None:
    pairs, counts = select_pairs(TEXTS[:3], [0.5, 0.3, 0.0], "all_pairs", min_margin=0.25)
    assert as_tuples(pairs) == [(0, 2, 0.5), (1, 2, 0.3)]
    assert counts["below_min_margin"] == 1


def test_length_penalised_subtracts_alpha_times_length() -> None:
    # adjusted: 1.0-0.1*10=0, 0.8-0.1*1=0.7, 0.5-0.1*2=0.3 -> best 1, worst 0, margin 0.7
    pairs, _ = select_pairs(["long", "s", "m"], [1.0, 0.8, 0.5], "length_penalised", lengths=[10, 1, 2], alpha=0.1)
    assert as_tuples(pairs) == [(1, 0, 0.7)]
    plain, _ = select_pairs(["long", "s", "m"], [1.0, 0.8, 0.5], "best_vs_worst", lengths=[10, 1, 2], alpha=0.1)
    assert as_tuples(plain) == [(0, 2, 0.5)]


def test_best_vs_random_is_seeded_and_never_pairs_the_best_with_itself() -> None:
    scores = [0.1, 0.9, 0.3, 0.2, 0.5]
    texts = [str(i) for i in range(5)]
    picks = {select_pairs(texts, scores, "best_vs_random", key=f"p{k}")[0][0].rejected for k in range(30)}
    assert 1 not in picks and len(picks) > 1
    again = [select_pairs(texts, scores, "best_vs_random", key="p0", seed=3)[0] for _ in range(2)]
    assert again[0] == again[1]


def test_unscored_and_empty_candidates_are_never_paired() -> None:
    pairs, counts = select_pairs(["a", " ", "c", "d"], [None, 5.0, 0.2, 0.1], "best_vs_worst")
    assert as_tuples(pairs) == [(2, 3, 0.1)]
    assert (counts["unscored_candidates"], counts["empty_candidates"]) == (1, 1)
    with pytest.raises(ValueError, match="pair_rule"):
        select_pairs(TEXTS, [0, 1, 2, 3], "best")


def test_win_probabilities_average_both_orders() -> None:
    logits = {(0, 1): 2.0, (1, 0): 0.0}  # first order says 0 wins strongly; reversed order is neutral
    probs = win_probs_from_logits(2, logits)
    expected = (sigmoid(2.0) + 1.0 - 0.5) / 2
    assert probs[0][1] == pytest.approx(expected) and probs[1][0] == pytest.approx(1 - expected)
    assert scores_from_win_probs([[0.5, 0.8, 0.6], [0.2, 0.5, 0.4], [0.4, 0.6, 0.5]]) == pytest.approx(
        [0.7, 0.3, 0.5])
    assert sorted(ordered_pairs(3, "k")) == [(0, 1), (0, 2), (1, 0), (1, 2), (2, 0), (2, 1)]


def test_judge_outputs_are_parsed_or_rejected() -> None:
    assert parse_score("good answer.\nScore: 4") == 4.0
    assert parse_score("Score: 2 ... then Score = 3.5") == 3.5
    assert parse_score("Score: 9") is None and parse_score("no verdict") is None
    assert parse_verdict("I pick [[B]]") == "B" and parse_verdict("[[A]] or [[ B ]]") == "B"
    assert parse_verdict("A is better") is None


def ranked(scores: list[float]) -> dict:  # noqa: ANN201 - a hand-made ranked.jsonl row
    responses = ["four", "five!", "six"]
    return {"id": "r1", "prompt_id": "p1", "prompt": "Q?", "messages": [{"role": "user", "content": "Q?"}],
            "responses": responses, "response_ids": [candidate_id("p1", t) for t in responses], "scores": scores,
            "n_tokens": [1, 2, 3], "ranker": "verifier"}


def test_pair_rows_are_preference_rows_and_metrics_count_ties() -> None:
    rows = [ranked([1.0, 0.0, 0.0]), {**ranked([1.0, 1.0, 1.0]), "prompt_id": "p2"}]
    pairs, counts = build_pairs(rows, "best_vs_worst", 0.0, 0.0, seed=0)
    assert len(pairs) == 1
    pair = pairs[0]
    assert (pair["chosen"], pair["rejected"], pair["margin"]) == ("four", "five!", 1.0)
    assert pair["chosen_id"] == candidate_id("p1", "four") and pair["chosen_id"] != pair["rejected_id"]
    row = parse_row(pair, "preference")
    assert isinstance(row, PreferenceRow)
    assert row.chosen == "four" and row.rejected == "five!" and row.messages[-1]["content"] == "Q?"
    metrics = pair_metrics(rows, pairs, counts)
    assert metrics["pairs"] == 1 and metrics["tie_rate"] == 0.5
    assert (metrics["mean_chosen_chars"], metrics["mean_rejected_chars"]) == (4.0, 5.0)
