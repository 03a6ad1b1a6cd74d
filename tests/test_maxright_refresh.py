"""MAXRIGHT's refresh in the real training loop measures a fresh batch of an objective it did not train: one batch
with a low loss must not hide that objective's gap for the rest of the run."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from alignment.objectives import Maxright
from alignment.train.batches import CyclingBatches
from alignment.train.loop import JointTrainer, LoopSettings
from alignment.train.setup import make_accelerator, make_optimizer, make_scheduler

STEPS = 6
ROWS = 12


class Row:
    """A one-token example whose loss is its ``value`` (lengths are all 1, so batches keep a plain random order)."""

    def __init__(self, value: float):
        self.value, self.input_ids = value, [0]


class ValueLoss:
    """An objective whose loss on a batch is the batch's mean value (plus a zero-weight term so backward runs);
    records every batch mean it is asked for."""

    def __init__(self, name: str):
        self.name = name
        self.seen: list[float] = []

    def loss(self, model: Any, batch: dict[str, Any]) -> tuple[torch.Tensor, dict[str, float]]:
        value = batch["value"].mean()
        self.seen.append(float(value))
        return value + 0.0 * sum(p.sum() for p in model.parameters()), {}


def stream(values: list[float]) -> CyclingBatches[Row]:
    return CyclingBatches([Row(v) for v in values], batch_size=1, seed=0,
                          collate=lambda rows: {"value": torch.tensor([r.value for r in rows])})


def first_drawn(count: int) -> int:
    """Index of the row a fresh stream of ``count`` rows hands out first."""
    probe = stream([float(i) for i in range(count)])
    return int(probe.peek()["value"][0])


def run_maxright(tmp_path: Path) -> tuple[dict[str, int], ValueLoss, CyclingBatches[Row]]:
    # objective 0 (SFT): its first batch has loss 0 (below its optimum), every other batch loss 10;
    # objective 1 (preference): loss 1 everywhere. Optima (0, 0), λ = 0.5: gaps 0 vs 0.5 at the first refresh.
    sft_values = [10.0] * ROWS
    sft_values[first_drawn(ROWS)] = 0.0
    sft, preference = ValueLoss("sft"), ValueLoss("preference")
    streams = {0: stream(sft_values), 1: stream([1.0] * ROWS)}
    model = torch.nn.Linear(1, 1, bias=False)
    accelerator = make_accelerator("auto", "fp32", grad_accum=1)
    optimizer = make_optimizer(model, lr=1e-3, weight_decay=0.0)
    scheduler = make_scheduler(optimizer, "constant", 0.0, STEPS)
    model, optimizer, scheduler = accelerator.prepare(model, optimizer, scheduler)
    settings = LoopSettings(max_steps=STEPS, eval_every=STEPS, save_every=STEPS, keep_checkpoints=1,
                            progress=False)
    result = JointTrainer(accelerator, model, optimizer, scheduler, {0: sft, 1: preference}, streams,
                          Maxright(0.5, (0.0, 0.0), refresh_every=2), dict, settings, tmp_path / "ckpt",
                          None).run()
    return result.steps_per_objective, sft, streams[0]


def test_refresh_measures_a_new_batch_of_an_untrained_objective(tmp_path: Path) -> None:
    steps, sft, sft_stream = run_maxright(tmp_path)
    # step 0: refresh sees SFT loss 0 -> preference trains and the measured SFT batch is dropped; step 2's refresh
    # sees an SFT batch of loss 10 (gap 5 > 0.5), so SFT trains from then on (its own gap stays 5 after each step)
    assert sft.seen[:2] == [0.0, 10.0]
    assert steps == {"sft": STEPS - 2, "preference": 2}
    # consumed: the dropped batch plus one per SFT step
    assert sft_stream.consumed == 1 + steps["sft"]
