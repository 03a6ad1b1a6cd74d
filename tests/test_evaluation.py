"""Evaluation maths on hand-made data: bootstrap CIs, win rates with a scripted judge, MMLU scoring, reports."""

from __future__ import annotations

import json
import math
import re
from collections.abc import Sequence
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import torch

from alignment.evaluation.generation_cache import cached_rows, generation_key
from alignment.evaluation.mmlu import continuation_logprobs, mmlu_accuracy, mmlu_prompt
from alignment.evaluation.mt_bench import judge_groups, judged_summary, mt_bench_answers
from alignment.evaluation.report import flatten, format_value, render_markdown
from alignment.evaluation.stats import bootstrap_ci, estimate
from alignment.evaluation.win_rate import (
    Matchup,
    annotation_rows,
    judge_matchups,
    order_outcome,
    win_rate_summary,
)
from alignment.ranking.base import CandidateGroup, GroupScores, Ranker

# --- bootstrap --------------------------------------------------------------------------------------------------


def test_bootstrap_of_constant_values_is_a_point_and_is_seeded() -> None:
    assert bootstrap_ci([0.5, 0.5, 0.5]) == (0.5, 0.5)
    values = [1.0] * 30 + [0.0] * 70
    assert bootstrap_ci(values, seed=3) == bootstrap_ci(values, seed=3)
    low, high = bootstrap_ci(values, resamples=2000, seed=3)
    # binomial standard error sqrt(.3 * .7 / 100) = 0.0458: the 95% interval is about 0.3 -+ 0.09
    assert 0.19 < low < 0.23 and 0.37 < high < 0.41
    result = estimate(values, seed=3)
    assert result.value == pytest.approx(0.3) and result.n == 100 and result.low < 0.3 < result.high


def test_bootstrap_interval_of_two_values_spans_their_resampled_means() -> None:
    low, high = bootstrap_ci([0.0, 1.0], resamples=4000, seed=0)
    # resampled means are 0, 0.5, 1 with probabilities 1/4, 1/2, 1/4: the 2.5% and 97.5% quantiles are 0 and 1
    assert (low, high) == (0.0, 1.0)
    with pytest.raises(ValueError, match="at least one"):
        bootstrap_ci([])


# --- win rate ---------------------------------------------------------------------------------------------------


class ScriptedRanker(Ranker):
    """Scores a response by a rule of (position, text); records every group it saw."""

    name = "scripted"

    def __init__(self, rule: Any):
        super().__init__()
        self.rule = rule
        self.seen: list[CandidateGroup] = []

    def score_groups(self, groups: Sequence[CandidateGroup]) -> list[GroupScores]:
        self.seen += list(groups)
        return [GroupScores(scores=[self.rule(i, text) for i, text in enumerate(g.responses)]) for g in groups]


def _matchups(pairs: list[tuple[str, str]]) -> list[Matchup]:
    return [Matchup(key=f"k{i}", instruction=f"question {i}", output=out, reference=ref)
            for i, (out, ref) in enumerate(pairs)]


def test_order_outcome() -> None:
    assert (order_outcome(2.0, 1.0), order_outcome(1.0, 1.0), order_outcome(0.0, 1.0)) == (1.0, 0.5, 0.0)
    assert order_outcome(None, 1.0) is None


def test_both_orders_are_judged_and_ties_count_half() -> None:
    longer_wins = ScriptedRanker(lambda _i, text: float(len(text)))
    matchups = _matchups([("a long answer", "short"), ("short", "a long answer"), ("same", "same")])
    wins, unscored = judge_matchups(longer_wins, matchups)
    assert wins == [1.0, 0.0, 0.5] and unscored == 0
    # every matchup shown model-first and reference-first
    assert [g.responses for g in longer_wins.seen[:2]] == [("a long answer", "short"), ("short", "a long answer")]
    summary = win_rate_summary(wins, [m.output for m in matchups], resamples=500, seed=1)
    assert summary["win_rate"]["value"] == pytest.approx(0.5)
    assert (summary["wins"], summary["ties"], summary["losses"]) == (1, 1, 1)
    assert summary["mean_output_chars"] == pytest.approx((13 + 5 + 4) / 3)


def test_a_pure_position_bias_cancels_out() -> None:
    first_always_wins = ScriptedRanker(lambda i, _text: 1.0 if i == 0 else 0.0)
    wins, _ = judge_matchups(first_always_wins, _matchups([("x", "y"), ("better", "worse")]))
    assert wins == [0.5, 0.5]


def test_unscorable_judgements_are_counted_and_taken_as_ties() -> None:
    wins, unscored = judge_matchups(ScriptedRanker(lambda _i, _t: None), _matchups([("x", "y")]))
    assert wins == [0.5] and unscored == 2


def test_annotations_follow_alpaca_eval_preference_convention() -> None:
    matchups = _matchups([("m", "r"), ("m2", "r2")])
    rows = annotation_rows(matchups, [1.0, 0.25], "my-model", "scripted")
    assert [r["preference"] for r in rows] == [2.0, 1.25]
    assert rows[0]["output_1"] == "r" and rows[0]["output_2"] == "m" and rows[0]["generator_2"] == "my-model"


# --- MMLU -------------------------------------------------------------------------------------------------------

VOCAB = 128


class BiasedLM(torch.nn.Module):
    """Same next-token logits at every position: ``bias`` (a ``[V]`` vector)."""

    def __init__(self, bias: torch.Tensor):
        super().__init__()
        self.bias = torch.nn.Parameter(bias)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> Any:
        batch, length = input_ids.shape
        return SimpleNamespace(logits=self.bias.expand(batch, length, VOCAB))


def char_encode(text: str) -> list[int]:
    return [ord(c) % VOCAB for c in text]


def test_continuation_logprob_sums_the_continuation_tokens_only() -> None:
    uniform = BiasedLM(torch.zeros(VOCAB))
    scores = continuation_logprobs(uniform, [1, 2, 3], [[5], [6, 7]])
    assert scores == pytest.approx([-math.log(VOCAB), -2 * math.log(VOCAB)])


class RandomLM(torch.nn.Module):
    """Fixed random logits ``[B, T, V]`` (seeded by the input shape): every position predicts differently."""

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> Any:
        generator = torch.Generator().manual_seed(input_ids.numel())
        return SimpleNamespace(logits=torch.randn(*input_ids.shape, VOCAB, generator=generator))


def test_continuation_logprob_equals_the_full_log_softmax() -> None:
    context, continuations = [1, 2, 3, 4], [[5], [6, 7, 8]]
    scores = continuation_logprobs(RandomLM(), context, continuations)
    logits = RandomLM()(torch.zeros(2, 7, dtype=torch.long), None).logits  # the same batch shape, same logits
    full = torch.log_softmax(logits, dim=-1)
    expected = [float(full[0, 3, 5]), float(full[1, 3, 6] + full[1, 4, 7] + full[1, 5, 8])]
    assert scores == pytest.approx(expected, abs=1e-5)


def test_mmlu_picks_the_likeliest_option_letter() -> None:
    bias = torch.zeros(VOCAB)
    bias[ord("C")] = 10.0  # the letter C is by far the likeliest next token everywhere
    model = BiasedLM(bias)
    rows = [{"question": "Which?", "choices": ["w", "x", "y", "z"], "answer": 2, "subject": "s"},
            {"question": "Other?", "choices": ["w", "x", "y", "z"], "answer": 0, "subject": "s"}]
    dev = [{"question": "Dev?", "choices": ["p", "q", "r", "t"], "answer": 1, "subject": "s"}]
    zero = mmlu_accuracy(model, char_encode, rows, dev, shots=0, resamples=100)
    assert zero["accuracy"]["value"] == 0.5 and zero["per_subject"] == {"s": 0.5}
    assert mmlu_accuracy(model, char_encode, rows[:1], dev, shots=1, resamples=100)["accuracy"]["value"] == 1.0
    # a context cut to its last tokens still scores the same options
    assert mmlu_accuracy(model, char_encode, rows, dev, 1, 0, 100, 0, max_context=6)["accuracy"]["value"] == 0.5
    prompt = mmlu_prompt(rows[0], dev)
    assert prompt.startswith("The following are multiple choice questions (with answers) about s.")
    assert "Dev?\nA. p\nB. q\nC. r\nD. t\nAnswer: B\n\nWhich?\nA. w" in prompt and prompt.endswith("Answer:")
    with pytest.raises(ValueError, match="2-shot needs 2"):
        mmlu_accuracy(model, char_encode, rows, dev, shots=2)


def test_mmlu_shows_a_bar_over_the_questions_only_when_asked(capsys: pytest.CaptureFixture[str]) -> None:
    model = BiasedLM(torch.zeros(VOCAB))
    rows = [{"question": f"Q{i}?", "choices": ["w", "x"], "answer": 0, "subject": "s"} for i in range(3)]
    mmlu_accuracy(model, char_encode, rows, [], shots=0, resamples=10)
    assert capsys.readouterr().err == ""
    mmlu_accuracy(model, char_encode, rows, [], shots=0, resamples=10, progress=True)
    assert re.search(r"MMLU 0-shot: 100%.*3/3", capsys.readouterr().err)


def test_heldout_sft_loss_of_a_uniform_model_is_log_vocab(capsys: pytest.CaptureFixture[str]) -> None:
    from alignment.evaluation.heldout import heldout_sft

    labels = torch.tensor([[-100, 5, 6, -100], [-100, -100, 7, 8]])  # prompt and padding masked
    batch = {"input_ids": torch.ones(2, 4, dtype=torch.long), "attention_mask": torch.ones(2, 4), "labels": labels}
    result = heldout_sft(BiasedLM(torch.zeros(VOCAB)), [batch, batch], progress=True)
    # every unmasked label after the first position is a predicted response token: 2 + 2 per batch
    assert result["sft_loss"] == pytest.approx(math.log(VOCAB)) and result["tokens"] == 8 and result["rows"] == 4
    assert result["perplexity"] == pytest.approx(VOCAB)
    assert re.search(r"held-out sft: 100%.*2/2", capsys.readouterr().err)


# --- cache and report -------------------------------------------------------------------------------------------


def test_cached_rows_are_reused_only_under_the_same_key(tmp_path: Path) -> None:
    calls: list[int] = []

    def produce() -> list[dict[str, Any]]:
        calls.append(1)
        return [{"text": f"call {len(calls)}"}]

    key = generation_key("model-fp", [[1, 2]], {"temperature": 0.0})
    path = tmp_path / "gen" / "m.jsonl"
    assert cached_rows(path, key, produce) == ([{"text": "call 1"}], False)
    assert cached_rows(path, key, produce) == ([{"text": "call 1"}], True)
    other = generation_key("model-fp", [[1, 2]], {"temperature": 0.7})
    assert other != key and cached_rows(path, other, produce) == ([{"text": "call 2"}], False)


def test_markdown_tables_show_every_model_side_by_side() -> None:
    estimate_a = {"value": 0.5, "ci_low": 0.25, "ci_high": 0.75, "n": 4, "confidence": 0.95}
    report = {"models": {"a": {"path": "/a"}, "b": {"path": "/b"}}, "settings": {"seed": 0},
              "results": {"win_rate": {"a": {"win_rate": estimate_a, "n": 4}, "b": {"n": 2, "extra": [1, 2]}}}}
    markdown = render_markdown(report)
    assert "| metric | a | b |" in markdown
    assert "| win_rate | 0.5000 [0.2500, 0.7500] | - |" in markdown and "| n | 4 | 2 |" in markdown
    assert format_value(estimate_a) in markdown and "extra" not in markdown
    assert flatten({"x": {"y": 1.0}, "l": [1]}) == {"x.y": 1.0}
    json.dumps(report)


# --- MT-bench ---------------------------------------------------------------------------------------------------


class EchoBackend:
    """Answers every prompt with the number of its tokens (so later turns see longer prompts)."""

    name = "echo"

    def generate(self, prompts: Sequence[Sequence[int]], settings: Any, seeds: Any = None) -> list[Any]:
        return [SimpleNamespace(texts=[f"len{len(p)}"]) for p in prompts]


class ListTokenizer:
    """A chat template that is one token per message word."""

    chat_template = "words"

    def apply_chat_template(self, messages: list[dict[str, str]], add_generation_prompt: bool,
                            tokenize: bool) -> list[int]:
        return [1 for m in messages for _ in m["content"].split()]


def test_mt_bench_answers_are_in_fastchat_format_and_judged_per_turn() -> None:
    questions = [{"question_id": 81, "turns": ["one two", "three"]}, {"question_id": 82, "turns": ["four"]}]
    answers = mt_bench_answers(EchoBackend(), ListTokenizer(), questions, SimpleNamespace(seed=0), "m")  # type: ignore[arg-type]
    assert set(answers[0]) == {"question_id", "answer_id", "model_id", "choices", "tstamp"}
    # turn 2 is conditioned on turn 1 and its answer: 2 words + 1 answer word + 1 word
    assert answers[0]["choices"] == [{"index": 0, "turns": ["len2", "len4"]}] and answers[1]["model_id"] == "m"
    groups = judge_groups(questions, answers)
    assert [g.key for g in groups] == ["81:0", "81:1", "82:0"]
    assert "one two" in groups[1].prompt and "len2" in groups[1].prompt and groups[1].responses == ("len4",)
    summary = judged_summary(groups, [4.0, None, 2.0], resamples=100)
    assert summary["unscorable"] == 1 and summary["per_turn"] == {"turn_1": 3.0}
    assert summary["score"]["value"] == 3.0 and summary["score"]["n"] == 2


def test_model_keys_are_short_and_distinct() -> None:
    from stages.evaluate import model_key

    assert model_key("base") == "base" and model_key("round_00/joint_train") == "round_00_joint_train"
    long_a, long_b = model_key("/runs/a/round_00/joint_train/model"), model_key("/runs/b/round_00/joint_train/model")
    assert long_a.startswith("joint_train_model-") and long_a != long_b


def test_the_win_rate_on_length_matched_pairs_leaves_out_pairs_of_different_lengths() -> None:
    from alignment.evaluation.win_rate import length_matched, win_rate_summary

    assert length_matched("x" * 100, "y" * 80) and not length_matched("x" * 100, "y" * 79)
    outputs, references = ["a" * 100, "b" * 300, "c" * 50], ["r" * 90, "s" * 100, "t" * 55]
    summary = win_rate_summary([1.0, 1.0, 0.0], outputs, resamples=50, seed=0, references=references)
    assert summary["length_matched"]["n"] == 2  # the long second answer's win is left out
    assert summary["length_matched"]["win_rate"]["value"] == 0.5 and summary["win_rate"]["value"] == 2 / 3
