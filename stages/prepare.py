"""``stage=prepare``: materialise the embedded world (tokenizer, pretrained base model, data splits).

Every later stage reads this artifact like any other input: ``model/`` is a normal Hugging Face directory
(safetensors + tokenizer with chat template) and ``world/<split>.jsonl`` are ordinary data files.
"""

from __future__ import annotations

import dataclasses
import json
import time
from typing import Any

from stages.config.stage_configs import RunConfig
from stages.paths import WORLD_DATA_DIR, WORLD_MODEL_DIR
from stages.registry import StageContext, StageResult

STAGE_VERSION = 1


def inputs(run: RunConfig) -> dict[str, str]:
    return {}


def _world_sizes(run: RunConfig) -> Any:
    from alignment.data.world import WorldSizes

    names = {f.name for f in dataclasses.fields(WorldSizes)}
    return WorldSizes(**{name: getattr(run.world, name) for name in names})


def dry_run(run: RunConfig, stage_inputs: dict[str, str]) -> dict[str, Any]:
    from alignment.data.world import build_world

    world = build_world(run.world.seed, _world_sizes(run))
    counts = {split: len(rows) for split, rows in world.items()}
    print(f"[prepare] dry run: world splits {counts}; one sft row: {json.dumps(world['sft_train'][0])}")
    return {"splits": counts}


def run(run: RunConfig, ctx: StageContext) -> StageResult:
    import torch

    from alignment.data.world import build_world, pretraining_texts, world_corpus, write_world
    from alignment.models.pretrain import pretrain_lm
    from alignment.models.tiny import build_tiny_model, count_parameters, save_model_dir
    from alignment.models.tokenizer import train_tokenizer
    from alignment.train.metrics_log import MetricsLog

    cfg = run.world
    started = time.time()
    world = build_world(cfg.seed, _world_sizes(run))
    counts = write_world(world, ctx.work_dir / WORLD_DATA_DIR)
    pretrain = pretraining_texts(cfg.seed, n=max(2000, cfg.pretrain_steps * cfg.pretrain_batch_size // 4),
                                 correct_fraction=cfg.pretrain_correct_fraction)
    tokenizer = train_tokenizer(world_corpus(world) + pretrain, vocab_size=cfg.vocab_size)
    torch.manual_seed(cfg.seed)
    model = build_tiny_model(run.model.size, tokenizer, seed=cfg.seed)
    print(f"[prepare] pretraining the {run.model.size} base model ({count_parameters(model) / 1e6:.1f}M params, "
          f"{cfg.pretrain_steps} steps)")
    losses = pretrain_lm(model, tokenizer, pretrain, steps=cfg.pretrain_steps, batch_size=cfg.pretrain_batch_size,
                         lr=cfg.pretrain_lr, seed=cfg.seed, show_progress=run.stage.progress)
    with MetricsLog(ctx.logs_dir / "metrics.jsonl") as log:
        for step, loss in enumerate(losses, start=1):
            if step % run.stage.log_every == 0 or step == len(losses):
                log.write(step, {"pretrain/loss": loss})
    save_model_dir(model, tokenizer, ctx.work_dir / WORLD_MODEL_DIR)
    metrics = {
        "rows": counts,
        "parameters": count_parameters(model),
        "vocab_size": len(tokenizer),
        "pretrain_loss_first": losses[0],
        "pretrain_loss_last": losses[-1],
        "seconds": round(time.time() - started, 2),
    }
    return StageResult(outputs=[WORLD_DATA_DIR, WORLD_MODEL_DIR], metrics=metrics)
