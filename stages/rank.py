"""``stage=rank``: score this round's generated responses and turn them into preference pairs.

Reads ``round_XX/generate/responses.jsonl``; writes ``ranked.jsonl`` (every candidate with its id, score and,
for pairwise rankers, win probabilities) and ``pairs.jsonl`` (preference rows for joint_train). Scoring is
split into shards of ``stage.shard_size`` prompts under ``shards/`` (a restart scores only missing shards); with
several torchrun ranks shard ``i`` belongs to rank ``i % workers`` and rank 0 merges and selects the pairs.
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path
from typing import Any

from alignment.artifacts import ArtifactError, is_complete, stage_dir
from stages.config.stage_configs import RunConfig
from stages.registry import StageContext, StageResult

STAGE_VERSION = 1
DISTRIBUTED = True  # every torchrun rank takes part (see stages/registry.py)
RESPONSES_STAGE = "generate"
RESPONSES_FILE = "responses.jsonl"
RANKED_FILE = "ranked.jsonl"
PAIRS_FILE = "pairs.jsonl"
SHARDS_DIR = "shards"
WORKER_POLL_S = 5.0


def responses_dir(run: RunConfig) -> str:
    """This round's generate artifact."""
    return str(stage_dir(run.run_dir, run.round, RESPONSES_STAGE))


def judge_path(run: RunConfig) -> str:
    """The judge model: ``stage.judge_model`` or this round's policy."""
    from stages.generate import policy_input

    return run.stage.judge_model or policy_input(run)


def inputs(run: RunConfig) -> dict[str, str]:
    found = {"responses": responses_dir(run)}
    if run.stage.ranker in ("pairrm", "reward_model"):
        found["ranker_model"] = run.stage.ranker_model
    if run.stage.ranker == "judge":
        found["judge"] = judge_path(run)
    return found


def responses_file(run: RunConfig) -> Path:
    """``responses.jsonl`` of the complete generate artifact; a clear error when it is missing."""
    directory = responses_dir(run)
    if not is_complete(directory):
        raise ArtifactError(f"{directory} is not complete; run stage=generate round={run.round} first")
    return Path(directory) / RESPONSES_FILE


def load_groups(run: RunConfig) -> tuple[list[dict[str, Any]], list[Any]]:
    """The responses rows and their candidate groups (a malformed row names file and line)."""
    from alignment.data.readers import read_jsonl
    from alignment.ranking.records import group_of

    path = responses_file(run)
    rows = list(read_jsonl(path))
    return rows, [group_of(row, f"{path} line {number}") for number, row in enumerate(rows, start=1)]


def create_ranker(run: RunConfig) -> Any:
    """The ranker ``stage.ranker`` names, configured from the stage."""
    stage = run.stage
    if stage.ranker == "verifier":
        from alignment.ranking.verifier import VerifierRanker

        return VerifierRanker()
    if stage.ranker == "pairrm":
        from alignment.ranking.pairrm import PairRMRanker

        return PairRMRanker(stage.ranker_model, stage.batch_size, stage.device, stage.ranker_dtype,
                            stage.source_max_tokens, stage.candidate_max_tokens, run.seed)
    if stage.ranker == "reward_model":
        from alignment.ranking.reward_model import RewardModelRanker

        return RewardModelRanker(stage.ranker_model, stage.batch_size, stage.device, stage.ranker_dtype,
                                 stage.reward_max_tokens)
    return _judge(run)


def _judge(run: RunConfig) -> Any:
    from alignment.generation.base import BackendOptions
    from alignment.generation.factory import create_backend
    from alignment.generation.sources import resolve_model_source
    from alignment.ranking.judge import JudgeRanker, judge_settings
    from stages.paths import model_path, policy_path

    stage = run.stage
    source = resolve_model_source(stage.judge_model or policy_path(run), base_model=model_path(run))
    options = BackendOptions(dtype=run.model.dtype, batch_size=stage.batch_size, seed=run.seed, device=stage.device)
    backend = create_backend(stage.backend, source, options).backend
    settings = judge_settings(stage.judge_samples, stage.judge_temperature, stage.judge_max_new_tokens, run.seed)
    return JudgeRanker(backend, settings, stage.judge_mode, stage.judge_max_prompt_tokens)


def dry_run(run: RunConfig, stage_inputs: dict[str, str]) -> dict[str, Any]:
    from alignment.generation.sharding import plan_shards, worker_rank_and_count

    rows, groups = load_groups(run)
    report = {"inputs": stage_inputs, "prompts": len(rows), "candidates": sum(len(g.responses) for g in groups),
              "ranker": run.stage.ranker, "pair_rule": run.stage.pair_rule, "worker": list(worker_rank_and_count()),
              "shards": len(plan_shards(len(rows), run.stage.shard_size))}
    print(f"[rank] dry run: {json.dumps(report)}")
    return report


def _score_shards(run: RunConfig, work_dir: Path, rank: int, workers: int) -> dict[str, Any]:
    """Write this worker's missing shards of ranked rows; return the ranker's info and every shard."""
    from alignment.generation.sharding import missing_shards, plan_shards, run_shards, shards_of_worker
    from alignment.ranking.records import ranked_row

    rows, groups = load_groups(run)
    shards = plan_shards(len(rows), run.stage.shard_size)
    shard_dir = work_dir / SHARDS_DIR
    shard_dir.mkdir(parents=True, exist_ok=True)
    mine = shards_of_worker(shards, rank, workers)
    todo = [shard.index for shard in missing_shards(mine, shard_dir)]
    info: dict[str, Any] = {"ranker": run.stage.ranker, "scoring_seconds": 0.0}
    if todo:
        indexed = list(range(len(rows)))
        with create_ranker(run) as ranker:
            def produce(_shard: Any, part: Any) -> list[dict[str, Any]]:
                scored = ranker.score_groups([groups[i] for i in part])
                return [ranked_row(rows[i], s, ranker.name) for i, s in zip(part, scored, strict=True)]

            started = time.perf_counter()
            run_shards(indexed, mine, shard_dir, produce)
            info.update(scoring_seconds=round(time.perf_counter() - started, 3), ranker_info=ranker.describe(),
                        ranker_counts=ranker.counters())
    info["shards"] = {"total": len(shards), "this_worker": len(mine), "scored": todo,
                      "reused": sorted(s.index for s in mine if s.index not in todo)}
    return {"info": info, "shards": shards}


def run(run: RunConfig, ctx: StageContext) -> StageResult:
    from alignment.generation.sharding import worker_rank_and_count

    rank, workers = worker_rank_and_count()
    return run_as_worker(run, ctx, rank, workers)


def run_as_worker(run: RunConfig, ctx: StageContext, rank: int, workers: int) -> StageResult:
    """Worker ``rank`` of ``workers`` scores its shards; rank 0 merges them and selects the pairs."""
    from alignment.generation.sharding import merge_shards, wait_for_shards
    from stages.generate import _wait_for_file

    ranked = ctx.work_dir / RANKED_FILE
    info_file = ctx.logs_dir / "ranking.json"
    timeout = run.stage.shard_wait_timeout_s
    if not ranked.is_file():  # else a previous attempt merged everything and crashed before committing
        done = _score_shards(run, ctx.work_dir, rank, workers)
        if rank != 0:
            _wait_for_file(ranked, timeout, f"worker {rank}: rank 0 did not merge the shards")
            return StageResult(outputs=[RANKED_FILE, PAIRS_FILE], metrics=done["info"])
        if workers > 1:
            wait_for_shards(done["shards"], ctx.work_dir / SHARDS_DIR, timeout, WORKER_POLL_S)
        info_file.write_text(json.dumps(done["info"], indent=2, default=str))
        merge_shards(done["shards"], ctx.work_dir / SHARDS_DIR, ranked)
        shutil.rmtree(ctx.work_dir / SHARDS_DIR)
    return _pairs_result(run, ctx.work_dir, info_file, workers)


def _pairs_result(run: RunConfig, work_dir: Path, info_file: Path, workers: int) -> StageResult:
    from alignment.data.readers import read_jsonl, write_jsonl
    from alignment.ranking.records import build_pairs, pair_metrics

    ranked_rows = list(read_jsonl(work_dir / RANKED_FILE))
    stage = run.stage
    pairs, counts = build_pairs(ranked_rows, stage.pair_rule, stage.min_margin, stage.length_alpha, run.seed)
    write_jsonl(work_dir / PAIRS_FILE, pairs)
    logged = json.loads(info_file.read_text()) if info_file.is_file() else {}
    metrics = {**logged, **pair_metrics(ranked_rows, pairs, counts), "pair_rule": stage.pair_rule,
               "min_margin": stage.min_margin, "workers": workers}
    print(f"[rank] {metrics['pairs']} pairs from {metrics['prompts']} prompts with {stage.ranker} "
          f"(tie rate {metrics['tie_rate']})")
    return StageResult(outputs=[RANKED_FILE, PAIRS_FILE], metrics=metrics)
