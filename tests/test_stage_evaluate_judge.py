"""``stage=evaluate``'s pinned judge: a trained reward model (a ``train_rm`` artifact) judges win rates, eval.json
records it, repeated evaluations agree bit for bit, a judge that also ranked the training pairs is flagged, and
win rates against another model's answers."""

from __future__ import annotations

import json
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

from alignment.evaluation.win_rate import Matchup, judge_matchups, win_rate_summary
from alignment.ranking.base import CandidateGroup, GroupScores, Ranker
from pipeline.artifacts import read_manifest
from pipeline.layout import stage_dir
from stages.compose import compose_run
from stages.runner import run_stage

DATA = Path("/work/shared/data")
FAST = ("world=ci", "stage.progress=false")
WIN_RATE = ("stage.suites=[win_rate]", "stage.backend=hf", "stage.max_new_tokens=6", "stage.max_instructions=4",
            "stage.bootstrap_resamples=200", f"stage.reference_outputs={DATA / 'alpaca_eval/eval_set.jsonl'}",
            "stage.ranker=reward_model")


# --- the library: an order-invariant judge, ties, the references' length ------------------------------------------


class ScoreByLength(Ranker):
    """A pointwise, deterministic judge: the longer answer scores higher; records the groups it saw."""

    name = "length"
    order_invariant = True

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[CandidateGroup] = []

    def score_groups(self, groups: Sequence[CandidateGroup]) -> list[GroupScores]:
        self.seen += list(groups)
        return [GroupScores(scores=[float(len(r)) for r in g.responses]) for g in groups]


def test_an_order_invariant_judge_is_asked_once_and_equal_scores_tie() -> None:
    judge = ScoreByLength()
    matchups = [Matchup(key=f"k{i}", instruction="q", output=out, reference=ref)
                for i, (out, ref) in enumerate([("longer", "short"), ("ab", "abcd"), ("same", "four")])]
    wins, unscored = judge_matchups(judge, matchups)
    assert wins == [1.0, 0.0, 0.5] and unscored == 0
    assert [g.responses for g in judge.seen] == [("longer", "short"), ("ab", "abcd"), ("same", "four")]
    summary = win_rate_summary(wins, [m.output for m in matchups], references=[m.reference for m in matchups])
    assert summary["mean_reference_chars"] == pytest.approx((5 + 4 + 4) / 3)
    assert summary["mean_output_chars"] == pytest.approx((6 + 2 + 4) / 3)


# --- the stage --------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def judged_run(prepared_world: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A run directory with the world, a train_rm artifact (2 steps) and a generate artifact."""
    run_dir = tmp_path_factory.mktemp("judge") / "run"
    shutil.copytree(prepared_world / "round_00" / "prepare", run_dir / "round_00" / "prepare")
    run_stage(compose_run("stage=train_rm", *FAST, f"run_dir={run_dir}", "stage.train.max_steps=2",
                          "stage.train.eval_every=2", "stage.train.eval_max_rows=8"))
    run_stage(compose_run("stage=generate", *FAST, f"run_dir={run_dir}", "stage.backend=hf", "stage.n=2",
                          "stage.max_new_tokens=4", "stage.max_prompts=4"))
    return run_dir


def evaluate(run_dir: Path, *overrides: str) -> dict[str, Any]:
    run_stage(compose_run("stage=evaluate", *FAST, f"run_dir={run_dir}", *WIN_RATE, *overrides))
    return json.loads((stage_dir(run_dir, 0, "evaluate") / "eval.json").read_text())


def numbers(results: dict[str, Any]) -> dict[str, Any]:
    """Win-rate results without what names where things are (the judge's path, whether generations were cached)."""
    return {key: {**{k: v for k, v in values.items() if k not in ("generations_reused", "judge")},
                  "judge": {k: v for k, v in values["judge"].items() if k != "model"}}
            for key, values in results.items()}


@pytest.mark.skipif(not DATA.is_dir(), reason="needs /work/shared/data")
def test_a_reward_model_judge_is_recorded_and_two_evaluations_agree_bit_for_bit(judged_run: Path,
                                                                                tmp_path: Path) -> None:
    first_dir, second_dir = tmp_path / "first", tmp_path / "second"
    for target in (first_dir, second_dir):
        shutil.copytree(judged_run, target)
    artifact = stage_dir(first_dir, 0, "train_rm")
    first = evaluate(first_dir, "stage.models=[base]", f"stage.ranker_model={artifact}")
    second = evaluate(second_dir, "stage.models=[base]", "stage.ranker_model=round:train_rm")
    again = evaluate(first_dir, "stage.models=[base]", f"stage.ranker_model={artifact / 'model'}", "force=true")
    assert again["results"]["win_rate"]["base"]["generations_reused"] is True
    assert first["results"]["win_rate"]["base"]["generations_reused"] is False
    # separate run directories (generated and judged again) and a forced re-run: the same numbers, bit for bit
    assert numbers(first["results"]["win_rate"]) == numbers(second["results"]["win_rate"])
    assert numbers(again["results"]["win_rate"]) == numbers(first["results"]["win_rate"])
    judge = first["settings"]["judge"]
    assert judge["fingerprint"] == read_manifest(artifact)["fingerprint"] == again["settings"]["judge"]["fingerprint"]
    assert judge["loaded"] == str(artifact / "model") and judge["dtype"] == "float32"
    assert judge["seed"] == first["settings"]["seed"] == first["settings"]["bootstrap"]["seed"]
    assert judge["encoding"].startswith("training") and judge["max_tokens"] == 2048
    result = first["results"]["win_rate"]["base"]
    assert result["judge"]["orders"] == 1 and result["judge"]["counts"]["scored"] == 2 * 4
    assert result["mean_reference_chars"] > result["mean_output_chars"] > 0  # long GPT-4 references, 6-token answers
    assert first["warnings"] == [] and "Warnings" not in (stage_dir(first_dir, 0, "evaluate") / "eval.md").read_text()


@pytest.mark.skipif(not DATA.is_dir(), reason="needs /work/shared/data")
def test_a_judge_that_ranked_the_training_pairs_is_flagged(judged_run: Path, tmp_path: Path,
                                                           capsys: pytest.CaptureFixture[str]) -> None:
    from alignment.ranking.tiny import build_reward_checkpoint

    run_dir = tmp_path / "run"
    shutil.copytree(judged_run, run_dir)
    model_dir = stage_dir(run_dir, 0, "train_rm") / "model"
    run_stage(compose_run("stage=rank", *FAST, f"run_dir={run_dir}", "stage.ranker=reward_model",
                          f"stage.ranker_model={model_dir}"))
    report = evaluate(run_dir, "stage.models=[base]", "stage.ranker_model=round:train_rm")
    assert len(report["warnings"]) == 1 and "circular judge" in report["warnings"][0]
    assert "round(s) [0]" in report["warnings"][0]
    assert "## Warnings" in (stage_dir(run_dir, 0, "evaluate") / "eval.md").read_text()
    assert "[evaluate] WARNING: circular judge" in capsys.readouterr().out
    other = build_reward_checkpoint(tmp_path / "other_rm")  # a judge that ranked nothing here
    assert evaluate(run_dir, "stage.models=[base]", f"stage.ranker_model={other}", "force=true")["warnings"] == []


def perturbed_copy(model_dir: Path, target: Path) -> Path:
    """The world model with its output head perturbed (seeded): another policy that answers differently."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        head = model.get_output_embeddings().weight
        head.add_(torch.randn(head.shape, generator=generator) * head.std() * 2)
    model.save_pretrained(target)
    AutoTokenizer.from_pretrained(model_dir).save_pretrained(target)
    return target


@pytest.mark.skipif(not DATA.is_dir(), reason="needs /work/shared/data")
def test_win_rate_against_another_models_answers(judged_run: Path, tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    shutil.copytree(judged_run, run_dir)
    other = perturbed_copy(run_dir / "round_00" / "prepare" / "model", tmp_path / "other")
    world_tasks = tmp_path / "world_tasks.jsonl"  # instructions the world models answer (the outputs go unused)
    rows = [json.loads(line) for line in (run_dir / "round_00" / "prepare" / "world" / "pref_eval.jsonl").open()]
    world_tasks.write_text("".join(json.dumps({"instruction": r["prompt"], "output": ""}) + "\n" for r in rows))
    judge = ("stage.ranker_model=round:train_rm", f"stage.reference_outputs={world_tasks}", "stage.max_instructions=8",
             "stage.max_new_tokens=8")
    itself = evaluate(run_dir, "stage.models=[base]", "stage.win_rate_baseline=base", *judge)
    same = itself["results"]["win_rate"]["base"]
    assert same["win_rate"]["value"] == 0.5 and same["ties"] == 8  # identical answers: every matchup a tie
    assert same["mean_reference_chars"] == same["mean_output_chars"]
    assert itself["settings"]["win_rate_baseline"]["key"] == "baseline_base"
    forward = evaluate(run_dir, f"stage.models=['{other}']", "stage.win_rate_baseline=base", *judge, "force=true")
    annotations = json.loads(next((stage_dir(run_dir, 0, "evaluate") / "alpaca_eval").glob("*/annotations.json"))
                             .read_text())
    cached = [json.loads(line) for line in (run_dir / "cache" / "evaluate" / "win_rate" / "baseline_base.jsonl").open()]
    assert [a["output_1"] for a in annotations] == [row["responses"][0] for row in cached]  # base's answers
    assert {a["generator_1"] for a in annotations} == {"baseline_base"}
    backward = evaluate(run_dir, "stage.models=[base]", f"stage.win_rate_baseline={other}", *judge, "force=true")
    ahead = next(iter(forward["results"]["win_rate"].values()))
    behind = backward["results"]["win_rate"]["base"]
    # an order-invariant judge: A against B and B against A split every instruction between them
    assert ahead["win_rate"]["value"] + behind["win_rate"]["value"] == pytest.approx(1.0, abs=1e-12)
    assert (ahead["wins"], ahead["ties"]) == (behind["losses"], behind["ties"])
    assert ahead["mean_output_chars"] == behind["mean_reference_chars"] > 0
    assert ahead["ties"] < 8 and ahead["mean_output_chars"] != ahead["mean_reference_chars"]  # the answers differ
    problems = compose_run("stage=evaluate", "stage.win_rate_baseline=base").validate()
    assert any("stage.win_rate_baseline" in p for p in problems)
