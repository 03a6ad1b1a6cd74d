"""Does the judge see what the loop trains on? For every round's ``rank/pairs.jsonl``, the share of pairs whose
chosen answer a second reward model (the judge of the win rates) also scores above the rejected one.

    .venv/bin/python scripts/judge_agreement.py --run-dir runs/smol --judge runs/rm_hh_judge/round_00/train_rm

The ranker prefers every chosen answer by construction (by at least the rank stage's ``min_margin``). If the
judge agrees on little more than half of them, the preference signal each round trains on is mostly invisible
to the judge, and win rates judged by it cannot move much whatever the loop does. Ties count as half, the
interval is a seeded bootstrap over pairs. Writes ``judge_agreement.{md,json}`` into the run directory.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from experiments import say, table

from alignment.data.readers import read_jsonl
from alignment.evaluation.stats import bootstrap_ci
from alignment.ranking.base import CandidateGroup, GroupScores, Ranker
from pipeline.artifacts import is_complete
from pipeline.layout import RANK, Files, stage_dir, trained_model

PAIR_FIELDS = {"prompt_id": str, "prompt": str, "messages": list, "chosen": str, "rejected": str}


def read_pairs(path: Path) -> list[dict[str, Any]]:
    """The rows of a ``pairs.jsonl``; a row without a field the judge needs is an error naming file, line, field."""
    rows = list(read_jsonl(path))
    for line, row in enumerate(rows, start=1):
        for field, kind in PAIR_FIELDS.items():
            if not isinstance(row.get(field), kind):
                raise ValueError(f"{path} row {line}: field '{field}' must be a {kind.__name__}")
    return rows


def pair_groups(pairs: Sequence[dict[str, Any]]) -> list[CandidateGroup]:
    """One group per pair: (chosen, rejected), in that order, to the pair's conversation."""
    return [CandidateGroup(key=p["prompt_id"], prompt=p["prompt"], messages=tuple(p["messages"]),
                           responses=(p["chosen"], p["rejected"])) for p in pairs]


def agreements(scored: Sequence[GroupScores]) -> list[float]:
    """Per pair: 1 when the judge scores chosen above rejected, 0.5 on a tie, 0 below; unscored pairs left out."""
    values = []
    for group in scored:
        chosen, rejected = group.scores
        if chosen is not None and rejected is not None:
            values.append(1.0 if chosen > rejected else 0.5 if chosen == rejected else 0.0)
    return values


def judge_margins(scored: Sequence[GroupScores]) -> list[float]:
    """Per scored pair: the judge's score of chosen minus its score of rejected."""
    return [g.scores[0] - g.scores[1] for g in scored if g.scores[0] is not None and g.scores[1] is not None]


def round_agreement(judge: Ranker, pairs: Sequence[dict[str, Any]], seed: int) -> dict[str, Any]:
    """The judge's agreement with the ranker on ``pairs`` (rows of ``pairs.jsonl``), with its 95% CI."""
    scored = judge.score_groups(pair_groups(pairs))
    values = agreements(scored)
    if not values:
        return {"pairs": len(pairs), "scored": 0}
    low, high = bootstrap_ci(values, seed=seed)
    margins = judge_margins(scored)
    ranker_margins = [float(p["margin"]) for p in pairs if p.get("margin") is not None]
    return {"pairs": len(pairs), "scored": len(values), "agreement": sum(values) / len(values),
            "agreement_low": low, "agreement_high": high, "judge_margin": sum(margins) / len(margins),
            "ranker_margin": sum(ranker_margins) / len(ranker_margins) if ranker_margins else None}


def judge_path(spec: str) -> str:
    """A reward-model directory as given, or the trained model of a ``train_rm`` artifact directory."""
    path = Path(spec)
    return str(trained_model(path)) if (path / Files.MODEL).is_dir() else spec


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run-dir", required=True, type=Path, help="a multi-round run (round_XX/rank/pairs.jsonl)")
    parser.add_argument("--judge", required=True, help="reward model directory or train_rm artifact")
    parser.add_argument("--max-tokens", type=int, default=512, help="the judge's input limit, as in evaluation")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--seed", type=int, default=0)
    return parser.parse_args()


def main() -> None:
    from alignment.ranking.reward_model import RewardModelRanker

    args = parse_args()
    ranked: list[Path] = []  # rounds 0, 1, ... while their rank artifact is complete
    while is_complete(stage_dir(args.run_dir, len(ranked), RANK)):
        ranked.append(stage_dir(args.run_dir, len(ranked), RANK) / Files.PAIRS)
    if not ranked:
        raise SystemExit(f"{args.run_dir}: no complete {stage_dir(args.run_dir, 0, RANK)}")
    rows = []
    with RewardModelRanker(judge_path(args.judge), args.batch_size, max_tokens=args.max_tokens) as judge:
        for index, pairs_file in enumerate(ranked):
            say(f"round {index}: judging {pairs_file}", "judge_agreement")
            rows.append({"round": index, **round_agreement(judge, read_pairs(pairs_file), args.seed)})
        description = judge.describe()
    text = table(rows)
    print(text)
    (args.run_dir / "judge_agreement.md").write_text(f"judge: {args.judge}\n\n{text}\n")
    (args.run_dir / "judge_agreement.json").write_text(json.dumps({"judge": description, "rounds": rows}, indent=1))


if __name__ == "__main__":
    main()
