"""``stage=create_instructions``: fresh prompts for this round, written to ``prompts.jsonl``.

``source=world`` (default): the embedded world's generator draws new task prompts (seeded by seed and round,
none already in a world split). ``source=self_instruct``: the round's policy proposes instructions from
few-shot task lists over a seed pool (``stage.seed_pool``, a seed_tasks.jsonl-style file or any prompt rows;
empty = ``data.prompts``), post-filtered and ROUGE-L de-duplicated, optionally clustered for diversity.

Rows: ``{id, prompt, messages, family?, cluster?, provenance: seed|generated|world, round}``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from pipeline.artifacts import StageInput
from pipeline.layout import Files
from pipeline.protocol import StageContext, StageResult
from stages.builders.generation import backend_options, policy_source, sampling_settings
from stages.builders.paths import dataset_path, layout, policy_input
from stages.config.run_config import RunConfig

STAGE_VERSION = 1
DISTRIBUTED = False
node_worker = None


def seed_pool_path(run: RunConfig) -> str:
    """The self-instruct seed pool: ``stage.seed_pool`` or ``data.prompts``."""
    return run.stage.seed_pool or dataset_path(run, run.data.prompts)


def world_data_dir(run: RunConfig) -> Path:
    return layout(run).world_artifact() / Files.WORLD_DATA


def inputs(run: RunConfig) -> dict[str, StageInput]:
    if run.stage.source == "world":
        return {"world": StageInput(str(world_data_dir(run)))}
    return {"policy": policy_input(run), "seed_pool": StageInput(seed_pool_path(run))}


def _world_prompts_in_splits(world_dir: Path) -> set[str]:
    from alignment.data.readers import read_jsonl
    from alignment.world.splits import row_prompt

    files = sorted(world_dir.glob("*.jsonl"))
    if not files:
        raise FileNotFoundError(f"no world splits (*.jsonl) in {world_dir}; run stage=prepare first")
    return {row_prompt(row) for file in files for row in read_jsonl(file)}


def _world_rows(run: RunConfig) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    from alignment.generation.self_instruct import instruction_row
    from alignment.world.prompts import fresh_world_prompts

    excluded = _world_prompts_in_splits(world_data_dir(run))
    drawn = fresh_world_prompts(run.stage.n_instructions, run.seed, run.round, excluded)
    rows = [instruction_row(prompt, "world", run.round, family=family) for family, prompt in drawn]
    return rows, {"source": "world", "excluded_world_prompts": len(excluded)}


def _seed_instructions(run: RunConfig) -> list[str]:
    """The last user message of every seed-pool row (seed_tasks.jsonl rows read as alpaca instructions)."""
    from alignment.data.readers import read_rows

    spec = run.data.prompts
    path = seed_pool_path(run)
    from_data = not run.stage.seed_pool
    result = read_rows(path, kind="prompt", split=spec.split if from_data else None,
                       on_bad_row=run.data.on_bad_row, max_rows=spec.max_rows if from_data else None)
    texts = [next(m["content"] for m in reversed(row.messages) if m["role"] == "user") for row in result.rows]
    return list(dict.fromkeys(" ".join(t.split()) for t in texts))


def _self_instruct_settings(run: RunConfig, n_target: int) -> Any:
    from alignment.generation.self_instruct import InstructionFilter, SelfInstructSettings

    stage = run.stage
    settings = SelfInstructSettings(n_instructions=n_target, seed_shots=stage.seed_shots,
                                    machine_shots=stage.machine_shots, requests_per_round=stage.requests_per_round,
                                    max_rounds=stage.max_rounds, rouge_threshold=stage.rouge_threshold,
                                    prompt_format=stage.prompt_format, seed=run.seed + 1000 * run.round)
    return settings, InstructionFilter(stage.min_words, stage.max_words, tuple(stage.banned_keywords))


def _self_instruct_rows(run: RunConfig) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    from alignment.generation.clustering import select_diverse
    from alignment.generation.factory import create_backend
    from alignment.generation.self_instruct import instruction_row, self_instruct

    stage = run.stage
    seeds = _seed_instructions(run)
    n_target = round(stage.n_instructions * stage.cluster_oversample) if stage.n_clusters else stage.n_instructions
    settings, post_filter = _self_instruct_settings(run, n_target)
    choice = create_backend(stage.backend, policy_source(run), backend_options(run))
    with choice.backend as backend:
        generated, report = self_instruct(backend, seeds, settings, sampling_settings(stage, settings.seed),
                                          post_filter, progress=stage.progress)
    extras: list[dict[str, Any]] = [{} for _ in generated]
    if stage.n_clusters and generated:
        keep, labels = select_diverse(generated, stage.n_instructions, stage.n_clusters, run.seed)
        generated = [generated[i] for i in keep]
        extras = [{"cluster": labels[i]} for i in keep]
    rows = [instruction_row(text, "generated", run.round, **extra) for text, extra in zip(generated, extras,
                                                                                         strict=True)]
    if stage.include_seeds:
        rows = [instruction_row(text, "seed", run.round) for text in seeds] + rows
    metrics = {"source": "self_instruct", "seed_instructions": len(seeds), "generated": len(generated),
               "backend": choice.backend.name, "backend_fallback_reason": choice.fallback_reason,
               "backend_info": choice.backend.describe(), "self_instruct": report.to_dict(),
               "sampling": sampling_settings(stage, settings.seed).to_dict()}
    if len(generated) < stage.n_instructions:
        print(f"[create_instructions] only {len(generated)} of {stage.n_instructions} instructions survived "
              f"filtering after {report.rounds} round(s); see the manifest metrics")
    return rows, metrics


def _unique_by_id(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    seen: dict[str, dict[str, Any]] = {}
    for row in rows:
        seen.setdefault(row["id"], row)
    return list(seen.values())


def dry_run(run: RunConfig, stage_inputs: dict[str, str]) -> dict[str, Any]:
    from alignment.generation.self_instruct import task_list_prompt

    report: dict[str, Any] = {"source": run.stage.source, "n_instructions": run.stage.n_instructions,
                              "inputs": stage_inputs}
    if run.stage.source == "self_instruct":
        seeds = _seed_instructions(run)
        report.update(seed_instructions=len(seeds), example_request=task_list_prompt(seeds[: run.stage.seed_shots]))
    print(f"[create_instructions] dry run: {json.dumps(report)}")
    return report


def run(run: RunConfig, ctx: StageContext) -> StageResult:
    from alignment.data.readers import write_jsonl

    rows, metrics = _world_rows(run) if run.stage.source == "world" else _self_instruct_rows(run)
    rows = _unique_by_id(rows)
    write_jsonl(ctx.work_dir / Files.PROMPTS, rows)
    provenance: dict[str, int] = {}
    for row in rows:
        provenance[row["provenance"]] = provenance.get(row["provenance"], 0) + 1
    print(f"[create_instructions] wrote {len(rows)} prompts ({provenance}) to {Files.PROMPTS}")
    return StageResult(outputs=[Files.PROMPTS], metrics={**metrics, "prompts": len(rows), "provenance": provenance,
                                                        "round": run.round})
