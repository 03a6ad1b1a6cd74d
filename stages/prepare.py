"""``stage=prepare``: materialise the embedded world (tokenizer, pretrained base model, data splits).

Every later stage reads this artifact like any other input: ``model/`` is a normal Hugging Face directory
(safetensors + tokenizer with chat template) and ``world/<split>.jsonl`` are ordinary data files.
"""

from __future__ import annotations

import json
import time
from typing import Any

from pipeline.artifacts import StageInput
from pipeline.layout import Files
from pipeline.protocol import StageContext, StageResult
from stages.config.run_config import RunConfig

STAGE_VERSION = 1
DISTRIBUTED = False
node_worker = None


def inputs(run: RunConfig) -> dict[str, StageInput]:
    return {}


def dry_run(run: RunConfig, stage_inputs: dict[str, str]) -> dict[str, Any]:
    from alignment.world.splits import build_world

    world = build_world(run.world.seed, run.world.sizes())
    counts = {split: len(rows) for split, rows in world.items()}
    print(f"[prepare] dry run: world splits {counts}; one sft row: {json.dumps(world['sft_train'][0])}")
    return {"splits": counts}


def run(run: RunConfig, ctx: StageContext) -> StageResult:
    import torch

    from alignment.train.metrics_log import MetricsLog
    from alignment.world.pretrain import pretrain_lm
    from alignment.world.splits import build_world, pretraining_texts, world_corpus, write_world
    from alignment.world.tiny_model import build_tiny_model, count_parameters, save_model_dir
    from alignment.world.tokenizer import train_tokenizer

    cfg = run.world
    started = time.time()
    world = build_world(cfg.seed, run.world.sizes())
    counts = write_world(world, ctx.work_dir / Files.WORLD_DATA)
    pretrain = pretraining_texts(cfg.seed, n=max(2000, cfg.pretrain_steps * cfg.pretrain_batch_size // 4),
                                 correct_fraction=cfg.pretrain_correct_fraction)
    tokenizer = train_tokenizer(world_corpus(world) + pretrain, vocab_size=cfg.vocab_size)
    torch.manual_seed(cfg.seed)
    model = build_tiny_model(run.model.size, tokenizer, seed=cfg.seed)
    print(f"[prepare] pretraining the {run.model.size} base model ({count_parameters(model) / 1e6:.1f}M params, "
          f"{cfg.pretrain_steps} steps)")
    losses = pretrain_lm(model, tokenizer, pretrain, steps=cfg.pretrain_steps, batch_size=cfg.pretrain_batch_size,
                         lr=cfg.pretrain_lr, seed=cfg.seed, show_progress=run.stage.progress)
    with MetricsLog(ctx.logs_dir / Files.METRICS) as log:
        for step, loss in enumerate(losses, start=1):
            if step % run.stage.log_every == 0 or step == len(losses):
                log.write(step, {"pretrain/loss": loss})
    save_model_dir(model, tokenizer, ctx.work_dir / Files.MODEL)
    metrics = {
        "rows": counts,
        "parameters": count_parameters(model),
        "vocab_size": len(tokenizer),
        "pretrain_loss_first": losses[0],
        "pretrain_loss_last": losses[-1],
        "seconds": round(time.time() - started, 2),
    }
    return StageResult(outputs=[Files.WORLD_DATA, Files.MODEL], metrics=metrics)
