"""MAXRIGHT's refresh in the real training loop: it measures a fresh batch of an objective it did not train (one
batch with a low loss must not hide that objective's gap for the rest of the run), the update reuses the refresh's
forward when the refreshed gaps pick the objective whose gap was oldest, and the weights it trains equal the
reference update rule run by hand."""

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
    """A one-token example carrying one number (lengths are all 1, so batches keep a plain random order)."""

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


class FitLoss:
    """Squared error of a one-weight model pulling w toward ``target``: mean over the batch of (w·x − target·x)²,
    so the two objectives pull the same weight in opposite directions and MAXRIGHT has to alternate."""

    def __init__(self, name: str, target: float):
        self.name, self.target = name, target

    def loss(self, model: Any, batch: dict[str, Any]) -> tuple[torch.Tensor, dict[str, float]]:
        x = batch["value"].unsqueeze(-1)  # [B, 1]
        return ((model(x) - self.target * x) ** 2).mean(), {}


def stream(values: list[float], seed: int = 0) -> CyclingBatches[Row]:
    return CyclingBatches([Row(v) for v in values], batch_size=2, seed=seed,
                          collate=lambda rows: {"value": torch.tensor([r.value for r in rows])})


def first_drawn(count: int) -> list[int]:
    """Indices of the rows a fresh stream of ``count`` rows hands out first."""
    probe = stream([float(i) for i in range(count)])
    return [int(v) for v in probe.peek()["value"]]


def run_trainer(tmp_path: Path, components: dict[int, Any], streams: dict[int, CyclingBatches[Row]],
                schedule: Maxright, model: torch.nn.Module) -> dict[str, int]:
    accelerator = make_accelerator("auto", "fp32", grad_accum=1)
    optimizer = make_optimizer(model, lr=0.05, weight_decay=0.0)
    scheduler = make_scheduler(optimizer, "constant", 0.0, STEPS)
    model, optimizer, scheduler = accelerator.prepare(model, optimizer, scheduler)
    settings = LoopSettings(max_steps=STEPS, eval_every=STEPS, save_every=STEPS, keep_checkpoints=1,
                            progress=False)
    return JointTrainer(accelerator, model, optimizer, scheduler, components, streams, schedule, dict, settings,
                        tmp_path / "ckpt", None).run().steps_per_objective


def test_refresh_measures_a_new_batch_of_an_untrained_objective_and_reuses_an_unchanged_choice(
        tmp_path: Path) -> None:
    # objective 0 (SFT): its first batch has loss 0 (below its optimum), every other batch loss 10;
    # objective 1 (preference): loss 1 everywhere. Optima (0, 0), λ = 0.5: gaps 0 vs 0.5 at the first refresh.
    sft_values = [10.0] * ROWS
    for index in first_drawn(ROWS):
        sft_values[index] = 0.0
    sft, preference = ValueLoss("sft"), ValueLoss("preference")
    streams = {0: stream(sft_values), 1: stream([1.0] * ROWS)}
    steps = run_trainer(tmp_path, {0: sft, 1: preference}, streams, Maxright(0.5, (0.0, 0.0), refresh_every=2),
                        torch.nn.Linear(1, 1, bias=False))
    # step 0: refresh sees SFT loss 0 -> preference trains and the measured SFT batch is dropped; step 2's refresh
    # sees an SFT batch of loss 10 (gap 5 > 0.5), so SFT trains from then on (its own gap stays 5 after each step)
    assert sft.seen[:2] == [0.0, 10.0]
    assert steps == {"sft": STEPS - 2, "preference": 2}
    # consumed: the dropped batch plus one per SFT step
    assert streams[0].consumed == 1 + steps["sft"]
    # refreshes at steps 0, 2, 4, each forwarding with gradients the objective whose gap is oldest: at step 0 no gap
    # is known and SFT's forward is wasted (the refresh picks preference: two extra forwards, what every refresh of
    # the reference implementation costs); at step 2 SFT's gap is the older one and the refresh picks it, so that
    # forward is the update's (one extra); at step 4 preference's is the older one but SFT is kept (two extra)
    assert len(sft.seen) + len(preference.seen) == STEPS + 2 + 1 + 2


def reference_maxright(model: torch.nn.Module, losses: dict[int, FitLoss], streams: dict[int, CyclingBatches[Row]],
                       lambd: float, optima: tuple[float, float], refresh_every: int) -> dict[str, int]:
    """The reference update rule by hand: every ``refresh_every`` steps both gaps are recomputed without gradients
    on fresh batches, the larger weighted gap's objective is forwarded again on its batch and stepped, and its
    gap is updated with that (pre-update) loss."""
    weights = (1.0 - lambd, lambd)
    optimizer = make_optimizer(model, lr=0.05, weight_decay=0.0)
    gaps = [0.0, 0.0]
    counts = {loss.name: 0 for loss in losses.values()}
    for step in range(STEPS):
        if step % refresh_every == 0:
            batches = {i: streams[i].next() for i in (0, 1)}
            with torch.no_grad():
                gaps = [weights[i] * (float(losses[i].loss(model, batches[i])[0]) - optima[i]) for i in (0, 1)]
            chosen = 0 if gaps[0] >= gaps[1] else 1
            batch = batches[chosen]
        else:
            chosen = 0 if gaps[0] >= gaps[1] else 1
            batch = streams[chosen].next()
        loss = losses[chosen].loss(model, batch)[0]
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad()
        gaps[chosen] = weights[chosen] * (float(loss.detach()) - optima[chosen])
        counts[losses[chosen].name] += 1
    return counts


def test_trained_weights_equal_the_reference_update_rule(tmp_path: Path) -> None:
    values = [0.5 + 0.1 * i for i in range(ROWS)]
    losses = {0: FitLoss("sft", 1.0), 1: FitLoss("preference", -1.0)}
    torch.manual_seed(0)
    model = torch.nn.Linear(1, 1, bias=False)
    by_hand = torch.nn.Linear(1, 1, bias=False)
    by_hand.load_state_dict(model.state_dict())

    steps = run_trainer(tmp_path, losses, {0: stream(values, 1), 1: stream(values, 2)},
                        Maxright(0.5, (0.0, 0.0), refresh_every=3), model)
    expected = reference_maxright(by_hand, losses, {0: stream(values, 1), 1: stream(values, 2)}, 0.5, (0.0, 0.0), 3)

    assert steps == expected
    assert min(steps.values()) > 0  # the objectives pull w apart, so both get trained
    torch.testing.assert_close(model.weight.detach(), by_hand.weight.detach(), rtol=0, atol=1e-6)
