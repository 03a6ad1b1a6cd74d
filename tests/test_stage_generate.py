"""``stage=generate`` and ``stage=create_instructions`` end to end on the embedded world (hf backend; the
vLLM variant is marked slow), through :func:`stages.runner.run_stage`."""

from __future__ import annotations

import json
import os
import sys
import threading
from pathlib import Path
from typing import Any

import pytest

from pipeline.artifacts import ArtifactError, partial_dir, read_manifest
from pipeline.layout import stage_dir
from pipeline.protocol import StageContext
from pipeline.stage_run import StageRun
from stages.registry import stage_module
from stages.runner import run_node_worker, run_stage, stage_spec
from tests.conftest import compose_run
from tests.test_generation import make_lora_adapter
from tests.test_self_instruct import SEED_TASKS
from tests.watchdog import run_watched, wait_until

FAST = ("world=ci", "stage.progress=false", "stage.backend=hf", "stage.max_new_tokens=12")


def generate(run_dir: Path, *overrides: str) -> dict[str, Any]:
    return run_stage(compose_run("stage=generate", *FAST, f"run_dir={run_dir}", *overrides))


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def responses_of(run_dir: Path, round_index: int = 0) -> list[dict[str, Any]]:
    return read_jsonl(stage_dir(run_dir, round_index, "generate") / "responses.jsonl")


def world_split(run_dir: Path, split: str) -> list[dict[str, Any]]:
    return read_jsonl(run_dir / "round_00" / "prepare" / "world" / f"{split}.jsonl")


def test_generate_writes_responses_for_every_world_prompt(world_run_dir) -> None:
    run_dir = world_run_dir()
    manifest = generate(run_dir, "stage.n=3", "stage.shard_size=20")
    rows = responses_of(run_dir)
    prompts = world_split(run_dir, "prompts")
    assert [row["prompt_id"] for row in rows] == [p["id"] for p in prompts]
    assert [row["prompt"] for row in rows] == [p["prompt"] for p in prompts]
    assert all(len(row["responses"]) == len(row["finish_reasons"]) == len(row["n_tokens"]) == 3 for row in rows)
    assert all(row["backend"] == "hf" and row["messages"][-1]["role"] == "user" for row in rows)
    assert len({row["id"] for row in rows}) == len(rows)
    metrics = manifest["metrics"]
    assert metrics["backend"] == "hf" and metrics["backends"] == ["hf"] and metrics["prompts_from"] == "data"
    assert metrics["sampling"] == {"n": 3, "temperature": 1.0, "top_p": 1.0, "top_k": -1, "max_new_tokens": 12,
                                   "stop": [], "seed": 0}
    assert metrics["responses"] == 3 * len(prompts) and metrics["shards"]["total"] == 3
    truncated = sum(r == "length" for row in rows for r in row["finish_reasons"])
    empty = sum(not text.strip() for row in rows for text in row["responses"])
    assert (metrics["truncated_responses"], metrics["empty_responses"]) == (truncated, empty)
    assert manifest["outputs"]["responses.jsonl"]["rows"] == len(prompts)
    assert not (stage_dir(run_dir, 0, "generate") / "shards").exists()


def test_a_crashed_run_resumes_generating_only_missing_shards(world_run_dir, monkeypatch) -> None:
    import alignment.generation.responses as responses

    reference_dir, run_dir = world_run_dir("reference"), world_run_dir("crashed")
    generate(reference_dir, "stage.shard_size=10")
    real = responses.generate_rows
    calls: list[str] = []
    armed = [True]

    def crash_on_third(backend, items, settings, on_done=None):  # noqa: ANN001, ANN202
        calls.append(items[0].id)
        if armed[0] and len(calls) == 3:
            armed[0] = False
            raise RuntimeError("simulated crash")
        return real(backend, items, settings, on_done)

    monkeypatch.setattr(responses, "generate_rows", crash_on_third)
    with pytest.raises(RuntimeError, match="simulated crash"):
        generate(run_dir, "stage.shard_size=10")
    shards = sorted(p.name for p in (partial_dir(stage_dir(run_dir, 0, "generate")) / "shards").iterdir())
    assert shards == ["shard-00000-of-00005.jsonl", "shard-00001-of-00005.jsonl"]
    calls.clear()
    manifest = generate(run_dir, "stage.shard_size=10")
    assert len(calls) == 3 and manifest["metrics"]["shards"]["generated"] == [2, 3, 4]
    assert manifest["metrics"]["shards"]["reused"] == [0, 1]
    assert responses_of(run_dir) == responses_of(reference_dir)  # same prompts, same seeds, same shards


def open_work_dir(run: Any) -> StageContext:
    """What rank 0's runner does before the stage runs: the partial directory with pending.json."""
    final = stage_dir(run.run_dir, run.round, "generate")
    module = stage_module("generate")
    spec = stage_spec(run, module, module.inputs(run))
    with StageRun(final, spec):
        pass  # leaving without commit keeps the partial work directory
    return StageContext(work_dir=partial_dir(final), inputs={k: v.path for k, v in spec.inputs.items()},
                        resuming=False)


def test_torchrun_ranks_split_the_shards_and_rank_zero_merges(world_run_dir, monkeypatch) -> None:
    import stages.generate as stage

    single_dir, run_dir = world_run_dir("single"), world_run_dir("parallel")
    generate(single_dir, "stage.shard_size=10")
    run = compose_run("stage=generate", *FAST, f"run_dir={run_dir}", "stage.shard_size=10")
    context = open_work_dir(run)
    monkeypatch.setattr(stage, "WORKER_POLL_S", 0.01)
    results: dict[int, Any] = {}
    rank_one = threading.Thread(target=lambda: results.update({1: stage.run_as_worker(run, context, 1, 2)}))
    rank_one.start()
    # hf sampling seeds torch's global RNG, which threads share: let rank 1 finish its shards first (separate
    # processes under torchrun need no such care).
    shard_dir = context.work_dir / "shards"
    mine = [shard_dir / f"shard-0000{i}-of-00005.jsonl" for i in (1, 3)]
    wait_until(lambda: all(p.is_file() for p in mine) or not rank_one.is_alive(), "rank 1's shards",
               watch=[shard_dir])
    assert all(p.is_file() for p in mine), "rank 1 ended without writing its shards"
    results[0] = stage.run_as_worker(run, context, 0, 2)
    rank_one.join(timeout=60)
    assert results[1].metrics["shards"]["generated"] == [1, 3]
    assert results[0].metrics["shards"]["generated"] == [0, 2, 4] and results[0].metrics["workers"] == 2
    merged = read_jsonl(context.work_dir / "responses.jsonl")
    assert merged == responses_of(single_dir)  # same shards and seeds as one process


def test_nodes_without_torchrun_use_the_node_worker(world_run_dir, monkeypatch) -> None:
    import stages.runner as runner

    run_dir = world_run_dir()
    run = compose_run("stage=generate", *FAST, f"run_dir={run_dir}", "stage.shard_size=10")
    open_work_dir(run)
    monkeypatch.setattr(runner, "NODE_WORKER_POLL_S", 0.01)
    monkeypatch.setenv("NNODES", "2")
    monkeypatch.setenv("NODE_RANK", "1")
    info = run_node_worker(run, timeout_s=5)
    assert info["shards"]["generated"] == [1, 3] and info["backend"] == "hf"
    monkeypatch.setenv("NODE_RANK", "0")
    manifest = run_stage(run)
    assert manifest["metrics"]["shards"]["generated"] == [0, 2, 4] and manifest["metrics"]["workers"] == 2
    assert manifest["outputs"]["responses.jsonl"]["rows"] == len(world_split(run_dir, "prompts"))
    assert run_node_worker(run, timeout_s=1) == {}  # a late worker finds the artifact complete


@pytest.mark.slow
def test_generate_under_torchrun_with_two_processes(world_run_dir) -> None:
    run_dir = world_run_dir()
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m",
               "stages.cli", "stage=generate", *FAST, f"run_dir={run_dir}", "stage.shard_size=10"]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    result = run_watched(command, cwd=run_dir.parent, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    manifest = read_manifest(stage_dir(run_dir, 0, "generate"))
    assert manifest["metrics"]["workers"] == 2 and manifest["metrics"]["shards"]["generated"] == [0, 2, 4]
    assert manifest["outputs"]["responses.jsonl"]["rows"] == len(world_split(run_dir, "prompts"))


def test_create_instructions_world_prompts_feed_generate(world_run_dir) -> None:
    run_dir = world_run_dir()
    with pytest.raises(ArtifactError, match="create_instructions"):
        generate(run_dir, "stage.prompts_from=create_instructions")
    base = ("stage=create_instructions", "world=ci", "stage.progress=false", f"run_dir={run_dir}",
            "stage.n_instructions=30")
    manifest = run_stage(compose_run(*base))
    prompts = read_jsonl(stage_dir(run_dir, 0, "create_instructions") / "prompts.jsonl")
    seen = {row.get("prompt") or row["messages"][0]["content"]
            for split in ("prompts", "eval_tasks", "sft_train", "pref_train", "golden")
            for row in world_split(run_dir, split)}
    assert len(prompts) == 30 and not seen & {p["prompt"] for p in prompts}
    assert {p["provenance"] for p in prompts} == {"world"} and {p["round"] for p in prompts} == {0}
    assert manifest["metrics"]["provenance"] == {"world": 30}
    run_stage(compose_run(*base, "round=1"))
    later = read_jsonl(stage_dir(run_dir, 1, "create_instructions") / "prompts.jsonl")
    assert {p["prompt"] for p in later} != {p["prompt"] for p in prompts}
    manifest = generate(run_dir, "stage.n=1")
    assert manifest["metrics"]["prompts_from"] == "create_instructions"
    assert [row["prompt_id"] for row in responses_of(run_dir)] == [p["id"] for p in prompts]


def test_round_one_generates_from_the_previous_rounds_lora_policy(world_run_dir) -> None:
    run_dir = world_run_dir()
    base_model = run_dir / "round_00" / "prepare" / "model"
    adapter = make_lora_adapter(base_model, stage_dir(run_dir, 0, "joint_train") / "model")
    config = json.loads((adapter / "adapter_config.json").read_text())
    config["base_model_name_or_path"] = "/elsewhere/model"  # trained on another machine
    (adapter / "adapter_config.json").write_text(json.dumps(config))
    greedy = ("stage.n=1", "stage.temperature=0", "stage.max_prompts=8")
    round_one = generate(run_dir, "round=1", *greedy)
    assert round_one["metrics"]["backend_info"]["adapter"] == str(adapter)
    assert round_one["metrics"]["backend_info"]["model"] == str(base_model)
    assert round_one["inputs"]["policy"]["path"] == str(adapter)
    generate(run_dir, "round=0", *greedy)
    assert [r["responses"] for r in responses_of(run_dir, 1)] != [r["responses"] for r in responses_of(run_dir, 0)]


def test_self_instruct_stage_runs_with_the_policy(world_run_dir) -> None:
    if not SEED_TASKS.is_file():
        pytest.skip("shared self-instruct seed data is absent")
    run_dir = world_run_dir()
    manifest = run_stage(compose_run(
        "stage=create_instructions", "world=ci", "stage.progress=false", f"run_dir={run_dir}",
        "stage.source=self_instruct", f"stage.seed_pool={SEED_TASKS}", "stage.backend=hf", "stage.n_instructions=4",
        "stage.max_rounds=1", "stage.requests_per_round=3", "stage.max_new_tokens=24", "stage.include_seeds=true"))
    rows = read_jsonl(stage_dir(run_dir, 0, "create_instructions") / "prompts.jsonl")
    metrics = manifest["metrics"]
    assert metrics["seed_instructions"] == 175 and metrics["self_instruct"]["requests"] == 3
    assert metrics["provenance"]["seed"] == 175 and len(rows) == 175 + metrics["generated"]
    assert metrics["backend"] == "hf" and manifest["inputs"]["seed_pool"]["path"] == str(SEED_TASKS)


def test_dry_run_shows_the_encoded_first_prompt(world_run_dir, capsys) -> None:
    run_dir = world_run_dir()
    report = generate(run_dir, "dry_run=true")
    assert report["prompts"] == len(world_split(run_dir, "prompts")) and report["backend"] == "hf"
    assert report["first_prompt_ids"].count(report["first_prompt_ids"][0]) == 1  # one BOS
    assert "[generate] dry run" in capsys.readouterr().out
    assert not stage_dir(run_dir, 0, "generate").exists()


@pytest.mark.slow
def test_generate_with_the_vllm_backend(world_run_dir, monkeypatch) -> None:
    pytest.importorskip("vllm")
    monkeypatch.setenv("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
    run_dir = world_run_dir()
    manifest = generate(run_dir, "stage.backend=auto", "stage.kv_cache_gb=0.25", "stage.enforce_eager=true")
    assert manifest["metrics"]["backend"] == "vllm" and manifest["metrics"]["backend_fallback_reason"] is None
    assert read_manifest(stage_dir(run_dir, 0, "generate"))["metrics"]["backends"] == ["vllm"]


def test_prompts_over_the_token_limit_are_skipped_and_counted(world_run_dir) -> None:
    run_dir = world_run_dir()
    manifest = generate(run_dir, "stage.max_prompt_tokens=3")  # every chat prompt is longer than 3 tokens
    metrics = manifest["metrics"]
    assert metrics["prompts_too_long"] == len(world_split(run_dir, "prompts")) and metrics["prompts"] == 0
    assert metrics["backend"] is None and responses_of(run_dir) == []
