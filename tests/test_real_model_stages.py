"""Every stage on the real model (SmolLM2-135M-Instruct, ``model=smollm2``) and real data (``data=hh_alpaca``), at
a smoke budget: a few rows and steps each, so the default test run exercises what a real run does.

One run directory holds the chain create_instructions (self-instruct) -> generate (vLLM) -> rank (the model as
its own judge), joint_train (ALRIGHT, LoRA, on HH-RLHF pairs) -> evaluate (the trained model), and the filter
on Alpaca-cleaned candidates against Alpaca-GPT4 golden rows. Each stage is a module-scoped fixture, so
it runs once and a failure names the stage. No embedded world is built at any point. The dry run goes through
the real CLI in a subprocess.
"""

from __future__ import annotations

import json
import math
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from pipeline.layout import stage_dir
from stages.compose import compose_run
from stages.runner import run_stage
from tests.real_model import smollm2_dir  # noqa: F401 - the fixture

# data=hh_alpaca names its files relative to the repository root (the directory tests run from)
SHARED = Path("../shared/data")
pytestmark = pytest.mark.skipif(not (SHARED / "alpaca_gpt4").is_dir(), reason="needs ../shared/data (data=hh_alpaca)")

REAL = ("model=smollm2", "data=hh_alpaca", "stage.progress=false")
N_INSTRUCTIONS = 4
SAMPLES = 2
SCORE_RANGE = (0.0, 5.0)  # the pointwise judge's rubric
JUDGE_SAMPLES = 3  # most of the small judge's scores fall outside the rubric; a few samples give most responses one
CANDIDATES, GOLDEN = 24, 8
MMLU_ROWS, WIN_RATE_INSTRUCTIONS = 4, 3


def run_real(run_dir: Path, stage: str, *overrides: str) -> dict[str, Any]:
    return run_stage(compose_run(f"stage={stage}", *REAL, f"run_dir={run_dir}", *overrides))


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def artifact(run_dir: Path, stage: str) -> Path:
    return stage_dir(run_dir, 0, stage)


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory, smollm2_dir: Path) -> Path:  # noqa: F811
    return tmp_path_factory.mktemp("real")


@pytest.fixture(scope="module")
def instructions(run_dir: Path) -> dict[str, Any]:
    return run_real(run_dir, "create_instructions", "stage.source=self_instruct",
                    f"stage.seed_pool={SHARED / 'self_instruct_seed' / 'seed_tasks.jsonl'}",
                    f"stage.n_instructions={N_INSTRUCTIONS}", "stage.requests_per_round=4", "stage.max_rounds=3",
                    "stage.max_new_tokens=40", "stage.backend=hf")


@pytest.fixture(scope="module")
def generation_backend() -> str:
    from alignment.generation.factory import vllm_importable

    return "vllm" if vllm_importable() else "hf"


@pytest.fixture(scope="module")
def responses(run_dir: Path, instructions: dict[str, Any], generation_backend: str) -> Iterator[dict[str, Any]]:
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("VLLM_ENABLE_V1_MULTIPROCESSING", "0")  # the engine in this process: a quicker start
        yield run_real(run_dir, "generate", f"stage.backend={generation_backend}", f"stage.n={SAMPLES}",
                       "stage.max_new_tokens=40", "stage.max_model_len=1024", "stage.kv_cache_gb=0.25",
                       "stage.enforce_eager=true")


@pytest.fixture(scope="module")
def ranked(run_dir: Path, responses: dict[str, Any]) -> dict[str, Any]:
    # the judge is this round's policy, i.e. the real model itself
    return run_real(run_dir, "rank", "stage.ranker=judge", "stage.backend=hf",
                    f"stage.judge_samples={JUDGE_SAMPLES}", "stage.judge_max_new_tokens=8")


@pytest.fixture(scope="module")
def trained(run_dir: Path) -> dict[str, Any]:
    # HH-RLHF pairs: the small model's own verdicts are too unreliable to always yield a pair here (the chain
    # from ranked pairs into training runs in tests/test_recipe_smol.py with a reward-model ranker)
    return run_real(run_dir, "joint_train", "objective=alright", "model.lora.enabled=true", "stage.save_merged=true",
                    "stage.train.max_steps=3", "stage.train.eval_every=3", "data.max_length=256",
                    "data.preference.max_rows=8", "data.sft.max_rows=4",
                    "data.sft_eval.max_rows=2", "data.preference_eval.max_rows=2", "stage.train.sft_batch_size=2",
                    "stage.train.pref_batch_size=2")


def short_references(path: Path, count: int, max_chars: int = 400) -> Path:
    """The first ``count`` AlpacaEval rows whose reference output is 150..``max_chars`` characters, written to
    ``path``: most references run to 500-800 tokens, and the judge reads one per request."""
    rows = [json.loads(line) for line in (SHARED / "alpaca_eval" / "eval_set.jsonl").read_text().splitlines()]
    chosen = [row for row in rows if 150 <= len(row["output"]) <= max_chars][:count]
    path.write_text("".join(json.dumps(row) + "\n" for row in chosen))
    return path


@pytest.fixture(scope="module")
def evaluated(run_dir: Path, trained: dict[str, Any], smollm2_dir: Path,  # noqa: F811
              tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    references = short_references(tmp_path_factory.mktemp("alpaca_eval") / "eval_set.jsonl", WIN_RATE_INSTRUCTIONS)
    run_real(run_dir, "evaluate", "stage.models=[round_00/joint_train]",
             "stage.suites=[sft_loss,preference,mmlu,win_rate]", "data.sft_eval.max_rows=2",
             "data.preference_eval.max_rows=2", "data.max_length=256", f"stage.mmlu_path={SHARED / 'mmlu'}",
             "stage.mmlu_shots=[0]", f"stage.mmlu_max_rows={MMLU_ROWS}",
             f"stage.reference_outputs={references}", "stage.ranker=judge", f"stage.judge_model={smollm2_dir}",
             "stage.judge_mode=pairwise", "stage.judge_max_new_tokens=8",
             "stage.backend=hf", "stage.max_new_tokens=32", "stage.bootstrap_resamples=50")
    report: dict[str, Any] = json.loads((artifact(run_dir, "evaluate") / "eval.json").read_text())
    return report


@pytest.fixture(scope="module")
def filtered(run_dir: Path, smollm2_dir: Path) -> dict[str, Any]:  # noqa: F811
    return run_real(run_dir, "filter", "model.lora.enabled=true", f"data.golden.max_rows={GOLDEN}",
                    f"data.candidates.max_rows={CANDIDATES}", "data.max_length=128", "stage.max_steps=2",
                    "stage.batch_size=4", "stage.golden_batch_size=2")


def test_model_smollm2_is_the_converted_directory(smollm2_dir: Path) -> None:  # noqa: F811
    from stages.builders.paths import model_path

    assert model_path(compose_run("stage=generate", *REAL)) == str(smollm2_dir)


def test_self_instruct_proposes_new_instructions(run_dir: Path, instructions: dict[str, Any]) -> None:
    from alignment.generation.self_instruct import InstructionFilter

    rows = read_jsonl(artifact(run_dir, "create_instructions") / "prompts.jsonl")
    seeds = {json.loads(line)["instruction"] for line in (SHARED / "self_instruct_seed" / "seed_tasks.jsonl")
             .read_text().splitlines()}
    assert len(rows) == instructions["metrics"]["generated"] == N_INSTRUCTIONS
    assert all(row["provenance"] == "generated" and row["prompt"] not in seeds for row in rows)
    assert all(InstructionFilter().rejection(row["prompt"]) is None for row in rows)
    assert instructions["metrics"]["backend"] == "hf"


def test_generate_samples_every_instruction(run_dir: Path, instructions: dict[str, Any],
                                            responses: dict[str, Any], generation_backend: str) -> None:
    rows = read_jsonl(artifact(run_dir, "generate") / "responses.jsonl")
    prompts = read_jsonl(artifact(run_dir, "create_instructions") / "prompts.jsonl")
    assert [row["prompt_id"] for row in rows] == [p["id"] for p in prompts]
    assert all(len(row["responses"]) == SAMPLES for row in rows)
    texts = [text for row in rows for text in row["responses"]]
    assert all(text.strip() for text in texts)
    assert not any(marker in text for text in texts for marker in ("<|im_start|>", "<|im_end|>"))
    # SmolLM2's EOS (<|im_end|>, also its pad token) ends responses before the token budget
    assert "stop" in {reason for row in rows for reason in row["finish_reasons"]}
    assert responses["metrics"]["backend"] == generation_backend


def test_the_real_model_judges_and_pairs_its_responses(run_dir: Path, ranked: dict[str, Any]) -> None:
    ranked_rows = read_jsonl(artifact(run_dir, "rank") / "ranked.jsonl")
    scores = [s for row in ranked_rows for s in row["scores"] if s is not None]
    assert len(ranked_rows) == N_INSTRUCTIONS and scores
    assert all(SCORE_RANGE[0] <= s <= SCORE_RANGE[1] for s in scores)
    counts = ranked["metrics"]["ranker_counts"]
    assert counts["judge_requests"] == N_INSTRUCTIONS * SAMPLES
    assert counts["judge_samples"] == N_INSTRUCTIONS * SAMPLES * JUDGE_SAMPLES > counts["judge_unparseable_samples"]
    pairs = read_jsonl(artifact(run_dir, "rank") / "pairs.jsonl")
    assert len(pairs) == ranked["metrics"]["pairs"]  # a pair for each prompt whose samples the judge told apart
    for pair in pairs:
        row = next(r for r in ranked_rows if r["prompt"] == pair["prompt"])
        score = dict(zip(row["responses"], row["scores"], strict=True))
        assert score[pair["chosen"]] > score[pair["rejected"]]


def test_joint_train_saves_a_merged_model_that_generates(run_dir: Path, trained: dict[str, Any],
                                                         smollm2_dir: Path) -> None:  # noqa: F811
    from safetensors import safe_open

    from alignment.generation.base import SamplingSettings, chat_prompt_ids
    from alignment.generation.hf_backend import HFBackend
    from alignment.generation.sources import ModelSource

    metrics = trained["metrics"]
    assert metrics["steps"] == 3 and sum(metrics["steps_per_objective"].values()) == 3
    assert all(math.isfinite(metrics[key]) for key in ("eval/sft_loss", "eval/pref_loss"))
    assert trained["inputs"]["data.preference"]["path"].endswith("hh_rlhf/train.jsonl")
    model = artifact(run_dir, "joint_train") / "model"
    assert (model / "adapter_config.json").is_file()
    name = "model.layers.0.self_attn.q_proj.weight"
    with safe_open(str(model / "merged" / "model.safetensors"), "pt") as merged, \
            safe_open(str(smollm2_dir / "model.safetensors"), "pt") as base:
        assert not merged.get_tensor(name).equal(base.get_tensor(name))  # the trained adapter is merged in
    merged_dir = str(model / "merged")
    with HFBackend(ModelSource(merged_dir, merged_dir)) as backend:
        ids = chat_prompt_ids(backend.tokenizer, [{"role": "user", "content": "What is the capital of France?"}])
        completion = backend.generate([ids], SamplingSettings(temperature=0.0, max_new_tokens=12))[0]
    assert "Paris" in completion.texts[0]  # a few LoRA steps keep what the base model knows


def test_joint_train_on_real_data_runs_no_world_verifier(trained: dict[str, Any]) -> None:
    from stages.builders.training import verifier_tasks_path

    assert verifier_tasks_path(compose_run("stage=joint_train", *REAL)) is None
    assert "data.eval_tasks" not in trained["inputs"]
    assert not [key for key in trained["metrics"] if key.startswith("verifier")]


def test_evaluate_scores_the_trained_model_on_every_suite(run_dir: Path, evaluated: dict[str, Any]) -> None:
    results = {suite: per_model["round_00_joint_train"] for suite, per_model in evaluated["results"].items()}
    assert math.isfinite(results["sft_loss"]["sft_loss"]) and results["sft_loss"]["rows"] == 2
    assert math.isfinite(results["preference"]["pref_loss"]) and results["preference"]["pairs"] == 2
    mmlu = results["mmlu"]["0_shot"]["accuracy"]
    assert mmlu["n"] == MMLU_ROWS and 0.0 <= mmlu["value"] <= 1.0
    win_rate = results["win_rate"]
    assert win_rate["n"] == WIN_RATE_INSTRUCTIONS and 0.0 <= win_rate["win_rate"]["value"] <= 1.0
    # the real model judged every matchup: 2 presentation orders x the pairwise judge's own 2 orders
    judged = win_rate["judge"]["counts"]
    assert judged["judge_requests"] == judged["judge_samples"] == 4 * WIN_RATE_INSTRUCTIONS
    assert judged.get("judge_unparseable_samples", 0) < judged["judge_samples"]
    outputs = json.loads((artifact(run_dir, "evaluate") / "alpaca_eval" / "round_00_joint_train" /
                          "model_outputs.json").read_text())
    assert len(outputs) == WIN_RATE_INSTRUCTIONS and all(row["output"].strip() for row in outputs)


def test_filter_selects_among_real_alpaca_candidates(run_dir: Path, filtered: dict[str, Any]) -> None:
    selection = read_jsonl(artifact(run_dir, "filter") / "selection.jsonl")
    kept = read_jsonl(artifact(run_dir, "filter") / "filtered.jsonl")
    assert len(selection) == CANDIDATES and len(kept) == math.ceil(0.7 * CANDIDATES) == filtered["metrics"]["kept"]
    assert len({row["weight"] for row in selection}) > 1  # the selector moved
    assert filtered["metrics"]["steps"] == 2


def test_no_stage_built_an_embedded_world(run_dir: Path, evaluated: dict[str, Any],
                                          filtered: dict[str, Any]) -> None:
    assert not (run_dir / "round_00" / "prepare").exists()
    assert sorted(p.name for p in (run_dir / "round_00").iterdir() if p.is_dir()) == [
        "create_instructions", "evaluate", "filter", "generate", "joint_train", "rank"]


def test_the_cli_dry_run_prints_statistics_and_one_bos_per_turn(tmp_path: Path,
                                                                smollm2_dir: Path) -> None:  # noqa: F811
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path.cwd()), os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run([sys.executable, "-m", "stages.cli", "stage=joint_train", "model=smollm2",
                           "data=hh_alpaca", "dry_run=true", f"run_dir={tmp_path / 'run'}"],
                          capture_output=True, text=True, env=env, timeout=300, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    out = done.stdout
    for slot in ("sft", "preference", "sft_eval", "preference_eval"):
        assert re.search(rf"^\[dry run\] {slot}: \{{'source': '\.\./shared/data/", out, re.MULTILINE), slot
    example = out.split("[dry run] one sft example (loss-masked span in [[...]]):\n")[1].split("\n[dry run]")[0]
    turns = example.split("<|im_start|>")[1:]
    assert [turn.split("\n", 1)[0] for turn in turns] == ["system", "user", "assistant"]
    assert all(turn.count("<|im_end|>") == 1 for turn in turns)  # one BOS and one EOS per turn
    assert re.search(r"<\|im_start\|>assistant\n\[\[.+<\|im_end\|>\]\]$", example, re.DOTALL)
    assert "configuration valid; no training done" in out
    assert not (tmp_path / "run").exists()  # nothing written, no world built
