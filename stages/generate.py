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
  :func:`run_worker`, which writes their shards without taking the stage lock.
"""

from __future__ import annotations

import json
import shutil
import time
from typing import Any

from alignment.artifacts import ArtifactError, is_complete, partial_dir, stage_dir
from stages.config.stage_configs import RunConfig
from stages.paths import dataset_path, model_path, policy_path
from stages.registry import StageContext, StageResult

STAGE_VERSION = 1
DISTRIBUTED = True  # every torchrun rank takes part (see stages/registry.py)
RESPONSES_FILE = "responses.jsonl"
SHARDS_DIR = "shards"
INSTRUCTIONS_STAGE = "create_instructions"
INSTRUCTIONS_FILE = "prompts.jsonl"
TRAIN_STAGE = "joint_train"
DEVICE_ENV = "ALIGNMENT_GENERATION_DEVICE"  # set once the devices of this process are pinned
WORKER_POLL_S = 5.0


def instructions_dir(run: RunConfig) -> str:
    """This round's create_instructions artifact."""
    return str(stage_dir(run.run_dir, run.round, INSTRUCTIONS_STAGE))


def prompts_origin(run: RunConfig) -> tuple[str, str]:
    """``(kind, path)``: ("create_instructions", artifact dir) or ("data", data.prompts file/dir/id)."""
    choice = run.stage.prompts_from
    artifact = instructions_dir(run)
    if choice == "create_instructions" or (choice == "auto" and is_complete(artifact)):
        if not is_complete(artifact):
            raise ArtifactError(f"stage.prompts_from=create_instructions but {artifact} is not complete; run "
                                f"stage=create_instructions round={run.round} first")
        return INSTRUCTIONS_STAGE, artifact
    return "data", dataset_path(run, run.data.prompts)


def policy_input(run: RunConfig) -> str:
    """What identifies the policy: the previous round's complete joint_train artifact (fingerprinted from its
    manifest, without re-hashing the weights) or else the policy path itself."""
    trained = stage_dir(run.run_dir, run.round - 1, TRAIN_STAGE) if run.round > 0 else None
    return str(trained) if trained is not None and is_complete(trained) else policy_path(run)


def inputs(run: RunConfig) -> dict[str, str]:
    return {"policy": policy_input(run), "prompts": prompts_origin(run)[1]}


# --- config -> library values -------------------------------------------------------------------------------


def sampling_settings(stage: Any, seed: int) -> Any:
    """The stage's sampling fields as :class:`alignment.generation.base.SamplingSettings`."""
    from alignment.generation.base import SamplingSettings

    return SamplingSettings(n=stage.n, temperature=stage.temperature, top_p=stage.top_p, top_k=stage.top_k,
                            max_new_tokens=stage.max_new_tokens, stop=tuple(stage.stop), seed=seed)


def backend_options(run: RunConfig, device: str | None = None) -> Any:
    """The stage's runtime backend fields (and the model dtype) as ``BackendOptions``."""
    from alignment.generation.base import BackendOptions

    stage = run.stage
    return BackendOptions(dtype=run.model.dtype, batch_size=stage.batch_size,
                          tensor_parallel_size=stage.tensor_parallel_size, max_model_len=stage.max_model_len,
                          kv_cache_gb=stage.kv_cache_gb, gpu_memory_utilization=stage.gpu_memory_utilization,
                          enforce_eager=stage.enforce_eager, lora_mode=stage.lora_mode,
                          attn_implementation=run.model.attn_implementation, seed=run.seed, device=device)


def pin_local_devices(run: RunConfig) -> str | None:
    """Under torchrun with several ranks per node, restrict this rank's GPUs to its own slice (for vLLM's
    engine process) and return the hf backend's device; ``None`` when there is nothing to pin."""
    import os

    import torch

    from alignment.generation.sharding import local_devices

    local_rank, local_workers = int(os.environ.get("LOCAL_RANK", "0")), int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
    if DEVICE_ENV in os.environ:
        return os.environ[DEVICE_ENV]
    if local_workers <= 1 or not torch.cuda.is_available():
        return None
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    devices = visible.split(",") if visible else [str(i) for i in range(torch.cuda.device_count())]
    mine = local_devices(devices, local_rank, run.stage.tensor_parallel_size)
    # A process whose CUDA is already initialised keeps its device list; one that is not sees only `mine`.
    index = devices.index(mine[0]) if torch.cuda.is_initialized() else 0
    os.environ["CUDA_VISIBLE_DEVICES"] = ",".join(mine)
    os.environ[DEVICE_ENV] = f"cuda:{index}"
    return os.environ[DEVICE_ENV]


def policy_source(run: RunConfig) -> Any:
    """The round's policy as a ``ModelSource`` (an adapter's base falls back to the run's base model)."""
    from alignment.generation.sources import resolve_model_source

    return resolve_model_source(policy_path(run), base_model=model_path(run))


# --- prompts --------------------------------------------------------------------------------------------------


def load_prompt_items(run: RunConfig, tokenizer: Any) -> tuple[list[Any], dict[str, Any]]:
    """Prompt items to answer (deduplicated by id, too-long ones skipped) and counts for the manifest."""
    from alignment.data.readers import read_rows
    from alignment.generation.base import chat_prompt_ids
    from alignment.generation.responses import PromptItem

    kind, path = prompts_origin(run)
    spec = run.data.prompts
    if kind == INSTRUCTIONS_STAGE:
        result = read_rows(f"{path}/{INSTRUCTIONS_FILE}", kind="prompt", on_bad_row=run.data.on_bad_row)
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
    shard_dir = work_dir / SHARDS_DIR
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

        def produce(_shard: Any, part: Any) -> list[dict[str, Any]]:
            rows = generate_rows(choice.backend, part, settings)
            info["worker_generated_tokens"] += sum(sum(row["n_tokens"]) for row in rows)
            return rows

        started = time.perf_counter()
        with choice.backend:
            run_shards(items, mine, shard_dir, produce)
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
    from alignment.generation.sharding import merge_shards, wait_for_shards

    responses = ctx.work_dir / RESPONSES_FILE
    info_file = ctx.logs_dir / "generation.json"
    shard_dir = ctx.work_dir / SHARDS_DIR
    timeout = run.stage.shard_wait_timeout_s
    if not responses.is_file():  # else a previous attempt merged everything and crashed before committing
        done = _generate_shards(run, ctx.work_dir, rank, workers)
        if rank != 0:
            _wait_for_file(responses, timeout, f"worker {rank}: rank 0 did not merge the shards")
            return StageResult(outputs=[RESPONSES_FILE], metrics=done["info"])
        if workers > 1:
            wait_for_shards(done["shards"], shard_dir, timeout, WORKER_POLL_S)
        info_file.write_text(json.dumps({**done["info"], **done["counts"]}, indent=2, default=str))
        merge_shards(done["shards"], shard_dir, responses)
        shutil.rmtree(shard_dir)  # responses.jsonl (written atomically) now stands for every shard
    return _result(run, responses, info_file, workers)


def _wait_for_file(path: Any, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not path.is_file():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what} within {timeout_s:.0f}s ({path} is missing)")
        time.sleep(WORKER_POLL_S)


def _result(run: RunConfig, responses: Any, info_file: Any, workers: int) -> StageResult:
    from alignment.data.readers import read_jsonl
    from alignment.generation.responses import summarize_rows

    logged = json.loads(info_file.read_text()) if info_file.is_file() else {}
    summary = summarize_rows(list(read_jsonl(responses)))
    metrics = {**logged, **summary, "workers": workers,
               "sampling": sampling_settings(run.stage, run.seed).to_dict()}
    print(f"[generate] {summary['responses']} responses to {summary['prompts']} prompts "
          f"({summary['empty_responses']} empty, {summary['truncated_responses']} truncated)")
    return StageResult(outputs=[RESPONSES_FILE], metrics=metrics)


def run_worker(run: RunConfig, timeout_s: float | None = None) -> dict[str, Any]:
    """A worker of rank > 0 launched without torchrun (NODE_RANK/NNODES, one process per node): wait for rank
    0's work directory, write this worker's shards there and return, without taking the stage lock.

    (Under torchrun every rank goes through the runner instead.) Returns this worker's generation info
    (``{}`` if the artifact was already complete).
    """
    from alignment.artifacts import PENDING
    from alignment.generation.sharding import worker_rank_and_count
    from stages.runner import stage_spec, validate_or_raise

    validate_or_raise(run)
    rank, workers = worker_rank_and_count()
    final = stage_dir(run.run_dir, run.round, run.stage.name)
    work_dir = partial_dir(final)
    deadline = time.monotonic() + (run.stage.shard_wait_timeout_s if timeout_s is None else timeout_s)
    while True:
        if is_complete(final):
            return {}
        pending = work_dir / PENDING
        if pending.is_file() and json.loads(pending.read_text()).get("fingerprint") == stage_spec(run).fingerprint():
            break
        if time.monotonic() > deadline:
            raise TimeoutError(f"worker {rank}: rank 0 did not start {work_dir} with this config in time")
        time.sleep(WORKER_POLL_S)
    if (work_dir / RESPONSES_FILE).is_file():
        return {}
    info = dict(_generate_shards(run, work_dir, rank, workers)["info"])
    print(f"[generate] worker {rank}/{workers}: shards {info['shards']['generated']} written in {work_dir}")
    return info
