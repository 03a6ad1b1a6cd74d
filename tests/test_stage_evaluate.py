"""``stage=evaluate`` end to end on the tiny world with small slices of the real data in /work/shared/data."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from typing import Any

import pytest

from alignment.evaluation.report import format_value
from alignment.ranking.tiny import build_pairrm_checkpoint
from pipeline.layout import stage_dir
from stages.runner import run_stage
from tests.conftest import compose_run

DATA = Path("/work/shared/data")
HAS_ALPACA_EVAL = importlib.util.find_spec("alpaca_eval") is not None
FAST = ("world=ci", "stage.progress=false", "stage.backend=hf", "stage.max_new_tokens=6",
        "stage.bootstrap_resamples=200", "data.max_length=96")

pytestmark = pytest.mark.skipif(not DATA.is_dir(), reason="needs /work/shared/data")


def _evaluate(run_dir: Path, *overrides: str) -> dict[str, Any]:
    run_stage(compose_run("stage=evaluate", *FAST, f"run_dir={run_dir}", *overrides))
    return json.loads((stage_dir(run_dir, 0, "evaluate") / "eval.json").read_text())


def test_every_offline_suite_compares_two_models(world_run_dir: Any, tmp_path: Path) -> None:
    run_dir = world_run_dir()
    base_dir = run_dir / "round_00" / "prepare" / "model"
    pairrm = build_pairrm_checkpoint(tmp_path / "pairrm")
    report = _evaluate(
        run_dir, f"stage.models=[base,'{base_dir}']",
        "stage.suites=[sft_loss,preference,win_rate,mmlu,mt_bench,verifier]",
        f"data.sft_eval.path={DATA / 'alpaca_cleaned/test.jsonl'}", "data.sft_eval.max_rows=4",
        f"data.preference_eval.path={DATA / 'hh_rlhf/test.jsonl'}", "data.preference_eval.max_rows=4",
        "data.eval_tasks.max_rows=6",
        f"stage.reference_outputs={DATA / 'alpaca_eval/eval_set.jsonl'}", "stage.max_instructions=3",
        "stage.ranker=pairrm", f"stage.ranker_model={pairrm}",
        f"stage.mmlu_path={DATA / 'mmlu'}", "stage.mmlu_max_rows=3", "stage.mmlu_shots=[0,1]",
        f"stage.mt_bench_path={DATA / 'mt_bench'}", "stage.mt_bench_max_questions=2",
        "loss.nll_weight=0.0")  # plain DPO (the default adds RPO's NLL term), so a zero margin gives log 2
    artifact = stage_dir(run_dir, 0, "evaluate")
    keys = list(report["models"])
    assert len(keys) == 2 and report["models"][keys[0]]["path"] == str(base_dir)
    results = report["results"]
    first, second = (results["win_rate"][key] for key in keys)
    # the same model twice: identical generations, hence identical numbers everywhere
    assert first["win_rate"] == second["win_rate"] and first["n"] == 3
    assert 0.0 <= first["win_rate"]["ci_low"] <= first["win_rate"]["value"] <= first["win_rate"]["ci_high"] <= 1.0
    assert first["wins"] + first["ties"] + first["losses"] == 3
    package = first["alpaca_eval"]  # the optional alpaca_eval package's own metrics of the same annotations
    if HAS_ALPACA_EVAL:
        assert package["win_rate"]["win_rate"] == pytest.approx(100 * first["win_rate"]["value"])  # a percentage
    else:
        assert package["win_rate"]["status"].startswith("unavailable: the alpaca_eval package is not installed")
    assert package["length_controlled_win_rate"]["status"].startswith("unavailable")  # no AlpacaEval index, offline
    # preference against the base model itself: zero margins, loss log(2) for DPO
    pref = results["preference"][keys[0]]
    assert pref["pairs"] == 4 and pref["reward_ties"] == 4 and pref["reward_margin"] == 0.0
    assert pref["pref_loss"] == pytest.approx(0.6931, abs=1e-3)
    sft = results["sft_loss"][keys[1]]
    assert sft["rows"] == 4 and sft["perplexity"] == pytest.approx(2.718281828 ** sft["sft_loss"], rel=1e-6)
    assert set(results["mmlu"][keys[0]]) == {"0_shot", "1_shot"}
    assert results["mmlu"][keys[0]]["0_shot"]["accuracy"]["n"] == 3
    assert results["verifier"][keys[0]]["tasks"] == 6
    answers = [json.loads(line) for line in (artifact / "mt_bench" / f"{keys[0]}.jsonl").read_text().splitlines()]
    assert len(answers) == 2 and set(answers[0]) == {"question_id", "answer_id", "model_id", "choices", "tstamp"}
    assert len(answers[0]["choices"][0]["turns"]) == 2
    annotations = json.loads((artifact / "alpaca_eval" / keys[0] / "annotations.json").read_text())
    assert len(annotations) == 3 and {a["generator_2"] for a in annotations} == {keys[0]}
    mean_preference = sum(a["preference"] - 1 for a in annotations) / 3  # AlpacaEval's win rate, as a fraction
    assert mean_preference == pytest.approx(first["win_rate"]["value"])
    for name in ("eval.md", "win_rate.png", "output_lengths.png", "verifier_accuracy.png", "mmlu_0_shot.png"):
        assert (artifact / name).is_file(), name
    markdown = (artifact / "eval.md").read_text()
    assert format_value(first["win_rate"]) in markdown and format_value(sft["sft_loss"]) in markdown
    assert report["settings"]["sampling"]["temperature"] == 0.0 and report["settings"]["judge"]["ranker"] == "pairrm"

    # a model against its own outputs: exactly 0.5, and the cached generations are reused (not regenerated)
    outputs = json.loads((artifact / "alpaca_eval" / keys[0] / "model_outputs.json").read_text())
    own = tmp_path / "own_outputs.json"
    own.write_text(json.dumps(outputs))
    again = _evaluate(run_dir, "stage.models=[base]", "stage.suites=[win_rate]", f"stage.reference_outputs={own}",
                      "stage.max_instructions=3", "stage.ranker=pairrm", f"stage.ranker_model={pairrm}",
                      "force=true")
    self_match = again["results"]["win_rate"]["base"]
    assert self_match["generations_reused"] is True
    assert self_match["win_rate"]["value"] == 0.5 and self_match["ties"] == 3
    assert self_match["win_rate"]["ci_low"] == self_match["win_rate"]["ci_high"] == 0.5
    if HAS_ALPACA_EVAL:  # generator_1 == generator_2: 50 by construction, no AlpacaEval inputs needed
        assert self_match["alpaca_eval"]["length_controlled_win_rate"]["length_controlled_winrate"] == 50.0

    # MT-bench answers re-judged by a pointwise judge (the world model) without regenerating them
    judged = _evaluate(run_dir, "stage.models=[base]", "stage.suites=[mt_bench]", f"stage.mt_bench_path={DATA / 'mt_bench'}",
                       "stage.mt_bench_max_questions=2", "stage.mt_bench_judge=true", "stage.ranker=judge",
                       f"stage.judge_model={base_dir}", "stage.judge_mode=pointwise", "stage.judge_max_new_tokens=4",
                       "force=true")["results"]["mt_bench"]["base"]
    assert judged["generations_reused"] is True
    per_turn_scored = judged["judge"].get("score", {}).get("n", 0)
    assert judged["judge"]["unscorable"] + per_turn_scored == 4  # 2 questions x 2 turns


def test_evaluate_config_names_missing_inputs(world_run_dir: Any) -> None:
    run_dir = world_run_dir()
    plan = run_stage(compose_run("stage=evaluate", *FAST, f"run_dir={run_dir}", "dry_run=true",
                                 "stage.models=[base,round_00/prepare]"))
    assert list(plan["models"]) == ["base", "round_00_prepare"]
    assert plan["models"]["round_00_prepare"]["path"] == str(run_dir / "round_00" / "prepare" / "model")
    assert plan["inputs"]["model:round_00_prepare"] == str(run_dir / "round_00" / "prepare")
    problems = compose_run("stage=evaluate", "stage.suites=[win_rate,mmlu,bogus]", "stage.models=[]").validate()
    text = "\n".join(problems)
    for expected in ("stage.models", "stage.reference_outputs", "stage.mmlu_path", "bogus", "stage.ranker_model"):
        assert expected in text
