"""The judge-agreement diagnostic: per-pair agreement against hand-computed values, and the script on a run
directory with a real (tiny, random) reward model as the judge, against that model's own scores."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from alignment.ranking.base import GroupScores
from alignment.ranking.reward_model import RewardModelRanker
from alignment.ranking.tiny import build_reward_checkpoint
from pipeline.artifacts import MANIFEST, SUCCESS
from pipeline.layout import RANK, Files, stage_dir

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))
import judge_agreement  # noqa: E402  (a script beside its helper module experiments.py)


def pair(index: int, chosen: str, rejected: str) -> dict[str, Any]:
    prompt = f"Question {index}: name a colour."
    return {"prompt_id": f"p{index}", "prompt": prompt, "messages": [{"role": "user", "content": prompt}],
            "chosen": chosen, "rejected": rejected, "margin": 1.0 + index}


def test_agreement_is_one_for_chosen_above_half_on_ties_and_skips_unscored_pairs() -> None:
    scored = [GroupScores([2.0, 1.0]), GroupScores([0.5, 0.5]), GroupScores([-1.0, 3.0]), GroupScores([None, 1.0])]
    assert judge_agreement.agreements(scored) == [1.0, 0.5, 0.0]
    assert judge_agreement.judge_margins(scored) == pytest.approx([1.0, 0.0, -4.0])


def test_a_pair_without_a_field_is_an_error_naming_file_row_and_field(tmp_path: Path) -> None:
    path = tmp_path / "pairs.jsonl"
    broken = pair(1, "red", "blue")
    del broken["rejected"]
    path.write_text(json.dumps(pair(0, "red", "blue")) + "\n" + json.dumps(broken) + "\n")
    with pytest.raises(ValueError, match=r"pairs.jsonl row 2: field 'rejected'"):
        judge_agreement.read_pairs(path)


def test_the_script_reports_each_round_s_agreement_as_the_judge_scores_it(tmp_path: Path) -> None:
    judge = build_reward_checkpoint(tmp_path / "judge", seed=3)
    run_dir = tmp_path / "run"
    rounds = [[pair(i, f"the colour red, said {'twice ' * i}", "blue") for i in range(6)],
              [pair(i, "green", f"a long answer about yellow {i}") for i in range(4)]]
    for index, pairs in enumerate(rounds):
        rank = stage_dir(run_dir, index, RANK)
        rank.mkdir(parents=True)
        (rank / Files.PAIRS).write_text("".join(json.dumps(p) + "\n" for p in pairs))
        (rank / MANIFEST).write_text("{}")
        (rank / SUCCESS).write_text("")
    subprocess.run([sys.executable, str(ROOT / "scripts" / "judge_agreement.py"), "--run-dir", str(run_dir),
                    "--judge", str(judge)], check=True, cwd=ROOT, capture_output=True, text=True)
    report = json.loads((run_dir / "judge_agreement.json").read_text())["rounds"]
    with RewardModelRanker(str(judge), max_tokens=512) as ranker:
        for row, pairs in zip(report, rounds, strict=True):
            scored = ranker.score_groups(judge_agreement.pair_groups(pairs))
            scores = [[float(s) for s in g.scores if s is not None] for g in scored]
            assert all(len(pair_scores) == 2 for pair_scores in scores)  # a reward model scores every answer
            expected = [1.0 if chosen > rejected else 0.5 if chosen == rejected else 0.0 for chosen, rejected in scores]
            assert row["pairs"] == row["scored"] == len(pairs)
            assert row["agreement"] == pytest.approx(sum(expected) / len(expected))
            assert row["agreement_low"] <= row["agreement"] <= row["agreement_high"]
            assert row["ranker_margin"] == pytest.approx(sum(1.0 + i for i in range(len(pairs))) / len(pairs))
    assert [row["round"] for row in report] == [0, 1]
    assert "| round | pairs |" in (run_dir / "judge_agreement.md").read_text()
