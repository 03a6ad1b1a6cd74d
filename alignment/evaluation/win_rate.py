"""Win rate of a model's outputs against reference outputs (AlpacaEval style), judged by any ranker.

Every instruction is judged in both presentation orders (model first, reference first) so a position bias of
the judge cancels; a judge that scores each answer on its own (``Ranker.order_invariant``, e.g. a reward
model) is asked once, since the order cannot change its verdict. The answer with the higher score wins; a tie
counts as half a win. The references are any outputs to the same instructions: AlpacaEval's reference
outputs, or another model's answers (a baseline model, the previous round's policy). Results are also written in AlpacaEval's own formats
(``model_outputs.json`` rows ``{instruction, output, generator, dataset}`` and annotations with ``output_1`` =
reference, ``output_2`` = model and ``preference`` in [1, 2], 2 = the model wins), which the optional
``alpaca_eval`` package can score too (:func:`alpaca_eval_metrics`, re-exported from
:mod:`alignment.evaluation.alpaca_eval_package`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from alignment.evaluation.alpaca_eval_package import alpaca_eval_metrics as alpaca_eval_metrics  # re-exported
from alignment.evaluation.stats import DEFAULT_RESAMPLES, estimate
from alignment.ranking.base import CandidateGroup, Ranker


@dataclass(frozen=True)
class Matchup:
    """One instruction with the model's output and the reference output to compare it with."""

    key: str
    instruction: str
    output: str
    reference: str
    reference_generator: str = "reference"
    dataset: str = ""
    index: int | None = None  # position in AlpacaEval's instruction set, for its length-controlled win rate


def order_outcome(first_score: float | None, second_score: float | None) -> float | None:
    """1 when the first candidate scores higher, 0 when lower, 0.5 on a tie; ``None`` when unscorable."""
    if first_score is None or second_score is None:
        return None
    if first_score > second_score:
        return 1.0
    return 0.5 if first_score == second_score else 0.0


def _group(matchup: Matchup, model_first: bool) -> CandidateGroup:
    responses = (matchup.output, matchup.reference) if model_first else (matchup.reference, matchup.output)
    return CandidateGroup(key=f"{matchup.key}:{'model_first' if model_first else 'reference_first'}",
                          prompt=matchup.instruction,
                          messages=({"role": "user", "content": matchup.instruction},), responses=responses)


def presentation_orders(ranker: Ranker) -> tuple[bool, ...]:
    """The orders a matchup is shown in, as ``model_first`` flags: both, or one for an order-invariant judge."""
    return (True,) if ranker.order_invariant else (True, False)


def judge_matchups(ranker: Ranker, matchups: Sequence[Matchup]) -> tuple[list[float], int]:
    """The model's win probability per matchup (mean over the presentation orders; ties 0.5) and the number
    of unscorable judgements (counted, and then taken as ties so every instruction keeps its weight)."""
    orders = presentation_orders(ranker)
    groups = [_group(m, model_first) for m in matchups for model_first in orders]
    scored = ranker.score_groups(groups) if groups else []
    wins: list[float] = []
    unscored = 0
    for index in range(len(matchups)):
        outcomes = []
        for offset, model_first in enumerate(orders):
            scores = scored[len(orders) * index + offset].scores
            model, reference = (scores[0], scores[1]) if model_first else (scores[1], scores[0])
            outcomes.append(order_outcome(model, reference))
        unscored += sum(1 for outcome in outcomes if outcome is None)
        wins.append(sum(0.5 if o is None else o for o in outcomes) / len(outcomes))
    return wins, unscored


LENGTH_MATCH_TOLERANCE = 0.2


def win_rate_summary(wins: Sequence[float], outputs: Sequence[str], resamples: int = DEFAULT_RESAMPLES,
                     seed: int = 0, references: Sequence[str] | None = None) -> dict[str, Any]:
    """Win rate with its bootstrap CI, win/tie/loss counts and the mean output length beside it (and the
    references' mean length, when given, so a length bias of the judge shows)."""
    if not wins:
        raise ValueError("no matchups to summarise")
    summary = {"win_rate": estimate(wins, resamples, seed).to_dict(),
               "wins": sum(1 for w in wins if w > 0.5), "ties": sum(1 for w in wins if w == 0.5),
               "losses": sum(1 for w in wins if w < 0.5), "n": len(wins),
               "mean_output_chars": mean_chars(outputs),
               "mean_output_words": sum(len(text.split()) for text in outputs) / len(outputs)}
    if references is not None:
        summary["mean_reference_chars"] = mean_chars(references)
        summary["mean_reference_words"] = sum(len(text.split()) for text in references) / max(1, len(references))
        matched = [w for w, out, ref in zip(wins, outputs, references, strict=True) if length_matched(out, ref)]
        summary["length_matched"] = {"n": len(matched), **({"win_rate": estimate(matched, resamples, seed).to_dict()}
                                                           if matched else {})}
    return summary


def length_matched(output: str, reference: str, tolerance: float = LENGTH_MATCH_TOLERANCE) -> bool:
    """Whether two answers' lengths in characters differ by at most ``tolerance`` of the longer one: on such
    pairs a judge's preference cannot come from length alone."""
    longer = max(len(output), len(reference), 1)
    return abs(len(output) - len(reference)) <= tolerance * longer


def mean_chars(texts: Sequence[str]) -> float:
    """Mean length of ``texts`` in characters (0 for none)."""
    return sum(len(text) for text in texts) / len(texts) if texts else 0.0


def model_outputs_rows(matchups: Sequence[Matchup], generator: str) -> list[dict[str, Any]]:
    """AlpacaEval ``model_outputs.json`` rows of the model's outputs."""
    return [{"instruction": m.instruction, "output": m.output, "generator": generator, "dataset": m.dataset}
            for m in matchups]


def annotation_rows(matchups: Sequence[Matchup], wins: Sequence[float], generator: str,
                    annotator: str) -> list[dict[str, Any]]:
    """AlpacaEval annotations: ``preference`` = 1 + P(model wins), so 1 = reference, 2 = model, 1.5 = tie; with
    ``index`` when the matchup has one."""
    return [{"instruction": m.instruction, "output_1": m.reference, "generator_1": m.reference_generator,
             "output_2": m.output, "generator_2": generator, "annotator": annotator, "preference": 1.0 + w,
             "dataset": m.dataset, **({} if m.index is None else {"index": m.index})}
            for m, w in zip(matchups, wins, strict=True)]
