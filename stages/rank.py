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

from pipeline.artifacts import ArtifactError, StageInput, is_complete
from pipeline.layout import GENERATE, Files
from pipeline.protocol import StageContext, StageResult
from stages.builders.paths import layout
from stages.builders.ranking import (
    MODEL_RANKERS,
    create_ranker,
    judge_identity,
    judge_model,
    ranker_model_input,
)
from stages.config.run_config import RunConfig

STAGE_VERSION = 1
DISTRIBUTED = True  # every torchrun rank takes part
node_worker = None
WORKER_POLL_S = 5.0


def responses_dir(run: RunConfig) -> str:
    """This round's generate artifact."""
    return str(layout(run).stage_dir(run.round, GENERATE))


def inputs(run: RunConfig) -> dict[str, StageInput]:
    found = {"responses": StageInput(responses_dir(run))}
    if run.stage.ranker in MODEL_RANKERS:
        found["ranker_model"] = ranker_model_input(run)
    if run.stage.ranker == "judge":
        found["judge"] = StageInput(judge_model(run), judge_identity(run))
    return found


def responses_file(run: RunConfig) -> Path:
    """``responses.jsonl`` of the complete generate artifact; a clear error when it is missing."""
    directory = responses_dir(run)
    if not is_complete(directory):
        raise ArtifactError(f"{directory} is not complete; run stage=generate round={run.round} first")
    return Path(directory) / Files.RESPONSES


def load_groups(run: RunConfig) -> tuple[list[dict[str, Any]], list[Any]]:
    """The responses rows and their candidate groups (a malformed row names file and line)."""
    from alignment.data.readers import read_jsonl
    from alignment.ranking.records import group_of

    path = responses_file(run)
    rows = list(read_jsonl(path))
    return rows, [group_of(row, f"{path} line {number}") for number, row in enumerate(rows, start=1)]


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
    shard_dir = work_dir / Files.SHARDS
    shard_dir.mkdir(parents=True, exist_ok=True)
    mine = shards_of_worker(shards, rank, workers)
    todo = [shard.index for shard in missing_shards(mine, shard_dir)]
    info: dict[str, Any] = {"ranker": run.stage.ranker, "scoring_seconds": 0.0}
    if todo:
        indexed = list(range(len(rows)))
        with create_ranker(run) as ranker:
            def produce(_shard: Any, part: Any, _advance: Any) -> list[dict[str, Any]]:
                scored = ranker.score_groups([groups[i] for i in part])
                return [ranked_row(rows[i], s, ranker.name) for i, s in zip(part, scored, strict=True)]

            started = time.perf_counter()
            run_shards(indexed, mine, shard_dir, produce, progress=run.stage.progress, desc="rank", unit="prompt")
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
    from alignment.generation.sharding import merge_shards, wait_for_file, wait_for_shards

    ranked = ctx.work_dir / Files.RANKED
    info_file = ctx.logs_dir / Files.RANKING_INFO
    timeout = run.stage.shard_wait_timeout_s
    if not ranked.is_file():  # else a previous attempt merged everything and crashed before committing
        done = _score_shards(run, ctx.work_dir, rank, workers)
        if rank != 0:
            wait_for_file(ranked, timeout, f"worker {rank}: rank 0 did not merge the shards", WORKER_POLL_S)
            return StageResult(outputs=[Files.RANKED, Files.PAIRS], metrics=done["info"])
        if workers > 1:
            wait_for_shards(done["shards"], ctx.work_dir / Files.SHARDS, timeout, WORKER_POLL_S)
        info_file.write_text(json.dumps(done["info"], indent=2, default=str))
        merge_shards(done["shards"], ctx.work_dir / Files.SHARDS, ranked)
        shutil.rmtree(ctx.work_dir / Files.SHARDS)
    return _pairs_result(run, ctx.work_dir, info_file, workers)


def _pairs_result(run: RunConfig, work_dir: Path, info_file: Path, workers: int) -> StageResult:
    from alignment.data.readers import read_jsonl, write_jsonl
    from alignment.ranking.records import build_pairs, pair_metrics

    ranked_rows = list(read_jsonl(work_dir / Files.RANKED))
    stage = run.stage
    pairs, counts = build_pairs(ranked_rows, stage.pair_rule, stage.min_margin, stage.length_alpha, run.seed)
    write_jsonl(work_dir / Files.PAIRS, pairs)
    logged = json.loads(info_file.read_text()) if info_file.is_file() else {}
    metrics = {**logged, **pair_metrics(ranked_rows, pairs, counts), "pair_rule": stage.pair_rule,
               "min_margin": stage.min_margin, "workers": workers}
    print(f"[rank] {metrics['pairs']} pairs from {metrics['prompts']} prompts with {stage.ranker} "
          f"(tie rate {metrics['tie_rate']})")
    return StageResult(outputs=[Files.RANKED, Files.PAIRS], metrics=metrics)
