"""``stage=generate``: sample ``n`` responses per prompt from the round's policy into ``responses.jsonl``.

The policy is ``policy_path(run)`` (round 0: the base model; round k: round k-1's ``joint_train/model``, a full
model or a LoRA adapter). Prompts come from this round's ``create_instructions`` artifact or ``data.prompts``
(``stage.prompts_from``). The chat template is applied once, here, and the backend receives token ids.

Work is split into shards of ``stage.shard_size`` prompts written to ``shards/`` in the work directory; a
restart regenerates only missing shards. With several workers shard ``i`` belongs to worker ``i % workers``
and rank 0 merges once every shard is there:

* torchrun (RANK/WORLD_SIZE): every rank runs the stage through the runner in rank 0's work directory; with
  several ranks per node each rank's engine gets its own ``tensor_parallel_size`` GPUs (LOCAL_RANK). Keep
  vLLM's engine in its own process (the default ``VLLM_ENABLE_V1_MULTIPROCESSING=1``) so it does not join
  the ranks' process group.
* one process per node without torchrun (NODE_RANK/NNODES): node 0 runs the stage; the other nodes call
  :func:`node_worker` (through the runner), which writes their shards without taking the stage lock.
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path
from typing import Any

from pipeline.artifacts import ArtifactError, StageInput, is_complete
from pipeline.layout import CREATE_INSTRUCTIONS, Files
from pipeline.protocol import StageContext, StageResult
from stages.builders.generation import backend_options, pin_local_devices, policy_source, sampling_settings
from stages.builders.paths import dataset_path, layout, policy_input
from stages.config.run_config import RunConfig

STAGE_VERSION = 1
DISTRIBUTED = True  # every torchrun rank takes part
WORKER_POLL_S = 5.0


def prompts_origin(run: RunConfig) -> tuple[str, str]:
    """``(kind, path)``: ("create_instructions", artifact dir) or ("data", data.prompts file/dir/id)."""
    choice = run.stage.prompts_from
    artifact = str(layout(run).stage_dir(run.round, CREATE_INSTRUCTIONS))
    if choice == "create_instructions" or (choice == "auto" and is_complete(artifact)):
        if not is_complete(artifact):
            raise ArtifactError(f"stage.prompts_from=create_instructions but {artifact} is not complete; run "
                                f"stage=create_instructions round={run.round} first")
        return CREATE_INSTRUCTIONS, artifact
    return "data", dataset_path(run, run.data.prompts)


def inputs(run: RunConfig) -> dict[str, StageInput]:
    return {"policy": policy_input(run), "prompts": StageInput(prompts_origin(run)[1])}


# --- prompts --------------------------------------------------------------------------------------------------


def load_prompt_items(run: RunConfig, tokenizer: Any) -> tuple[list[Any], dict[str, Any]]:
    """Prompt items to answer (deduplicated by id, too-long ones skipped) and counts for the manifest."""
    from alignment.data.readers import read_rows
    from alignment.generation.base import chat_prompt_ids
    from alignment.generation.responses import PromptItem

    kind, path = prompts_origin(run)
    spec = run.data.prompts
    if kind == CREATE_INSTRUCTIONS:
        result = read_rows(f"{path}/{Files.PROMPTS}", kind="prompt", on_bad_row=run.data.on_bad_row)
    else:
        result = read_rows(path, kind="prompt", split=spec.split, on_bad_row=run.data.on_bad_row,
                           max_rows=spec.max_rows)
    rows = result.rows[: run.stage.max_prompts] if run.stage.max_prompts else result.rows
    items, seen, too_long = [], set(), 0
    for row in rows:
        if row.id in seen:
            continue
        seen.add(row.id)
        ids = chat_prompt_ids(tokenizer, row.messages)
        if len(ids) > run.stage.max_prompt_tokens:
            too_long += 1
            continue
        meta = {key: value for key, value in row.meta.items() if key != "prompt"}  # the prompt has its own field
        items.append(PromptItem(id=row.id, messages=tuple(row.messages), prompt_ids=tuple(ids), meta=meta))
    counts = {"prompts_from": kind, "prompts_source": path, "prompts_read": len(result.rows),
              "bad_prompt_rows_skipped": result.skipped, "duplicate_prompts": len(rows) - len(seen),
              "prompts_too_long": too_long}
    return items, counts


# --- the stage -----------------------------------------------------------------------------------------------


def dry_run(run: RunConfig, stage_inputs: dict[str, str]) -> dict[str, Any]:
    from alignment.generation.sharding import plan_shards, worker_rank_and_count
    from alignment.models.loading import load_tokenizer

    source = policy_source(run)
    items, counts = load_prompt_items(run, load_tokenizer(source.tokenizer))
    rank, workers = worker_rank_and_count()
    report = {**counts, "prompts": len(items), "policy": source.describe(), "backend": run.stage.backend,
              "sampling": sampling_settings(run.stage, run.seed).to_dict(), "worker": [rank, workers],
              "shards": len(plan_shards(len(items), run.stage.shard_size))}
    if items:
        report["first_prompt_ids"] = list(items[0].prompt_ids)
    print(f"[generate] dry run: {json.dumps(report)}")
    return report


def _generate_shards(run: RunConfig, work_dir: Any, rank: int, workers: int) -> dict[str, Any]:
    """Write this worker's missing shards into ``work_dir/shards``.

    Returns ``{"info": generation metrics of this worker, "counts": prompt counts, "shards": every shard}``.
    """
    from alignment.data.readers import write_jsonl
    from alignment.generation.factory import create_backend
    from alignment.generation.responses import generate_rows
    from alignment.generation.sharding import missing_shards, plan_shards, run_shards, shards_of_worker
    from alignment.models.loading import load_tokenizer

    source = policy_source(run)
    items, counts = load_prompt_items(run, load_tokenizer(source.tokenizer))
    shards = plan_shards(len(items), run.stage.shard_size)
    shard_dir = work_dir / Files.SHARDS
    shard_dir.mkdir(parents=True, exist_ok=True)
    mine = shards_of_worker(shards, rank, workers)
    todo = {shard.index for shard in missing_shards(mine, shard_dir)}
    for shard in mine:
        if shard.index in todo and shard.size == 0:  # no prompts at all: no engine to start
            write_jsonl(shard.path(shard_dir), [])
            todo.discard(shard.index)
    info: dict[str, Any] = {"backend": None, "backend_requested": run.stage.backend,
                            "backend_fallback_reason": None, "startup_seconds": 0.0, "generation_seconds": 0.0,
                            "worker_generated_tokens": 0}
    if todo:
        settings = sampling_settings(run.stage, run.seed)
        choice = create_backend(run.stage.backend, source, backend_options(run, pin_local_devices(run)))
        print(f"[generate] worker {rank}/{workers}: {len(todo)} of {len(mine)} shard(s) to generate with "
              f"{choice.backend.name} ({choice.backend.startup_seconds:.1f}s start-up)")

        def produce(_shard: Any, part: Any, advance: Any) -> list[dict[str, Any]]:
            rows = generate_rows(choice.backend, part, settings, on_done=advance)
            info["worker_generated_tokens"] += sum(sum(row["n_tokens"]) for row in rows)
            return rows

        started = time.perf_counter()
        with choice.backend:
            run_shards(items, mine, shard_dir, produce, progress=run.stage.progress, desc="generate", unit="prompt")
        seconds = time.perf_counter() - started
        info.update(backend=choice.backend.name, backend_fallback_reason=choice.fallback_reason,
                    backend_info=choice.backend.describe(), startup_seconds=round(choice.backend.startup_seconds, 3),
                    generation_seconds=round(seconds, 3),
                    tokens_per_second=round(info["worker_generated_tokens"] / seconds, 2) if seconds else None)
    info["shards"] = {"total": len(shards), "this_worker": len(mine), "generated": sorted(todo),
                      "reused": sorted(s.index for s in mine if s.index not in todo)}
    return {"info": info, "counts": counts, "shards": shards}


def run(run: RunConfig, ctx: StageContext) -> StageResult:
    from alignment.generation.sharding import worker_rank_and_count

    rank, workers = worker_rank_and_count()
    return run_as_worker(run, ctx, rank, workers)


def run_as_worker(run: RunConfig, ctx: StageContext, rank: int, workers: int) -> StageResult:
    """The stage's work as worker ``rank`` of ``workers``; rank 0 merges, the others wait for the merge.

    Under torchrun every rank runs this in rank 0's work directory; waiting on files (not a collective) lets
    ranks finish their shards at different times without hitting a collective timeout.
    """
    from alignment.generation.sharding import merge_shards, wait_for_file, wait_for_shards

    responses = ctx.work_dir / Files.RESPONSES
    info_file = ctx.logs_dir / Files.GENERATION_INFO
    shard_dir = ctx.work_dir / Files.SHARDS
    timeout = run.stage.shard_wait_timeout_s
    if not responses.is_file():  # else a previous attempt merged everything and crashed before committing
        done = _generate_shards(run, ctx.work_dir, rank, workers)
        if rank != 0:
            wait_for_file(responses, timeout, f"worker {rank}: rank 0 did not merge the shards", WORKER_POLL_S)
            return StageResult(outputs=[Files.RESPONSES], metrics=done["info"])
        if workers > 1:
            wait_for_shards(done["shards"], shard_dir, timeout, WORKER_POLL_S)
        info_file.write_text(json.dumps({**done["info"], **done["counts"]}, indent=2, default=str))
        merge_shards(done["shards"], shard_dir, responses)
        shutil.rmtree(shard_dir)  # responses.jsonl (written atomically) now stands for every shard
    return _result(run, responses, info_file, workers)


def _result(run: RunConfig, responses: Any, info_file: Any, workers: int) -> StageResult:
    from alignment.data.readers import read_jsonl
    from alignment.generation.responses import summarize_rows

    logged = json.loads(info_file.read_text()) if info_file.is_file() else {}
    summary = summarize_rows(list(read_jsonl(responses)))
    metrics = {**logged, **summary, "workers": workers,
               "sampling": sampling_settings(run.stage, run.seed).to_dict()}
    print(f"[generate] {summary['responses']} responses to {summary['prompts']} prompts "
          f"({summary['empty_responses']} empty, {summary['truncated_responses']} truncated)")
    return StageResult(outputs=[Files.RESPONSES], metrics=metrics)


def node_worker(run: RunConfig, work_dir: Path) -> dict[str, Any]:
    """A node > 0 launched without torchrun (NODE_RANK/NNODES, one process per node): write this node's shards
    into rank 0's work directory (the runner found it started with this config) and return this worker's
    generation info, without waiting for the merge."""
    from alignment.generation.sharding import worker_rank_and_count

    if (work_dir / Files.RESPONSES).is_file():
        return {}
    rank, workers = worker_rank_and_count()
    info = dict(_generate_shards(run, work_dir, rank, workers)["info"])
    print(f"[generate] worker {rank}/{workers}: shards {info['shards']['generated']} written in {work_dir}")
    return info
