"""Throughput of the model rankers: comparisons/s (PairRM) and responses/s (reward model) on random weights.

Usage: ``python scripts/bench_rank.py [--large-layers 24] [--groups 4] [--n 4] [--batch-size 16]``.
Models: a tiny PairRM, a PairRM of deberta-v3-large dimensions (hidden 1024, 16 heads, 4096 FFN; the number of
layers is ``--large-layers``, 24 in the real model; reduce it when memory or time is short, the table says so)
and a tiny reward model. Responses are ~``--words`` words long so inputs have realistic lengths.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from alignment.ranking.base import CandidateGroup, Ranker
from alignment.ranking.pairrm import PairRMRanker
from alignment.ranking.reward_model import RewardModelRanker
from alignment.ranking.tiny import LARGE_DIMS, build_pairrm_checkpoint, build_reward_checkpoint


def groups(count: int, n: int, words: int) -> list[CandidateGroup]:
    """``count`` prompts with ``n`` candidate responses of about ``words`` words."""
    return [CandidateGroup(key=f"g{g}", prompt=f"Question {g}: explain topic {g}.",
                           messages=({"role": "user", "content": f"Question {g}: explain topic {g}."},),
                           responses=tuple(" ".join(f"word{(g + i + k) % 50}" for k in range(words))
                                           for i in range(n))) for g in range(count)]


def measure(ranker: Ranker, work: list[CandidateGroup], unit: str) -> tuple[int, float]:
    """``(units done, seconds)`` for one scoring pass (after a one-group warm-up)."""
    ranker.score_groups(work[:1])
    before = ranker.counters().get(unit, 0)
    started = time.perf_counter()
    ranker.score_groups(work)
    return ranker.counters().get(unit, 0) - before, time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--groups", type=int, default=4)
    parser.add_argument("--n", type=int, default=4)
    parser.add_argument("--words", type=int, default=200)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--large-layers", type=int, default=24)
    parser.add_argument("--device", default=None)
    args = parser.parse_args()
    work = groups(args.groups, args.n, args.words)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        cases = [("pairrm tiny", lambda: PairRMRanker(str(build_pairrm_checkpoint(Path(tmp) / "t")),
                                                      args.batch_size, args.device), "comparisons"),
                 (f"pairrm large-dims ({args.large_layers} layers)",
                  lambda: PairRMRanker(str(build_pairrm_checkpoint(Path(tmp) / "l", dims=LARGE_DIMS,
                                                                   layers=args.large_layers)),
                                       args.batch_size, args.device), "comparisons"),
                 ("reward_model tiny", lambda: RewardModelRanker(str(build_reward_checkpoint(Path(tmp) / "r")),
                                                                 args.batch_size, args.device), "scored")]
        for name, build, unit in cases:
            ranker = build()
            done, seconds = measure(ranker, work, unit)
            rows.append((name, unit, done, seconds, ranker.describe().get("device", "?")))
    print(f"{'model':<36} {'device':<8} {'unit':<12} {'count':>7} {'seconds':>9} {'per second':>11}")
    for name, unit, done, seconds, device in rows:
        print(f"{name:<36} {device:<8} {unit:<12} {done:>7} {seconds:>9.2f} {done / seconds:>11.3g}")


if __name__ == "__main__":
    main()
