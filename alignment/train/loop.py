"""The one training loop: objectives chosen per optimizer step, held-out eval of both objectives, early
stopping, checkpoints that resume exactly, and a clear stop on a non-finite loss.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from alignment.objectives import ObjectiveSchedule, Plan
from alignment.train.batches import CyclingBatches
from alignment.train.checkpoint import latest_checkpoint, load_checkpoint, save_checkpoint
from alignment.train.components import Component
from alignment.train.metrics_log import MetricsLog

Measured = dict[int, tuple[torch.Tensor, dict[str, float]]]  # objective -> (loss with its graph, logged values)


class NonFiniteLossError(RuntimeError):
    """A loss became NaN/inf; training stops and the last good checkpoint is kept."""


@dataclass
class LoopSettings:
    """Loop knobs (see ``stage.train`` in the config)."""

    max_steps: int
    grad_accum: int = 1
    max_grad_norm: float = 1.0
    eval_every: int = 50
    save_every: int = 50
    keep_checkpoints: int = 2
    log_every: int = 10
    early_stop_eps: float | None = None
    optima: tuple[float | None, float | None] = (None, None)
    ref_pareto: list[tuple[float, float]] = field(default_factory=list)
    progress: bool = True


@dataclass
class LoopResult:
    """What happened: steps done, why it stopped, the eval history (loss-space trajectory), timing."""

    steps: int
    stop_reason: str
    evals: list[dict[str, float]]
    steps_per_objective: dict[str, int]
    seconds: float
    seconds_per_step: float


def early_stop_reason(sft_loss: float, pref_loss: float, eps: float | None,
                      optima: tuple[float | None, float | None], pareto: list[tuple[float, float]]) -> str | None:
    """ALRIGHT's rule: stop when either objective is within ``eps`` of its optimum, or both reach a reference
    Pareto point (s, d): f_SFT − s ≤ eps and f_pref − d ≤ eps."""
    if eps is None:
        return None
    sft_opt, pref_opt = optima
    if sft_opt is not None and sft_loss - sft_opt <= eps:
        return f"eval sft loss {sft_loss:.4f} within {eps} of its optimum {sft_opt:.4f}"
    if pref_opt is not None and pref_loss - pref_opt <= eps:
        return f"eval preference loss {pref_loss:.4f} within {eps} of its optimum {pref_opt:.4f}"
    for s, d in pareto:
        if sft_loss - s <= eps and pref_loss - d <= eps:
            return f"reached the reference Pareto point ({s}, {d})"
    return None


class JointTrainer:
    """Runs ``settings.max_steps`` optimizer steps of the objectives ``schedule`` picks.

    ``components[i]``/``streams[i]`` are objective i's loss and data; ``evaluate()`` returns held-out metrics
    (``eval/sft_loss``, ``eval/pref_loss``, ...). Checkpoints go to ``checkpoint_dir``; an existing one is resumed.
    """

    def __init__(self, accelerator: Any, model: Any, optimizer: Any, scheduler: Any,
                 components: dict[int, Component], streams: dict[int, CyclingBatches[Any]],
                 schedule: ObjectiveSchedule, evaluate: Callable[[], dict[str, float]], settings: LoopSettings,
                 checkpoint_dir: Path, metrics: MetricsLog | None):
        self.accelerator, self.model, self.optimizer, self.scheduler = accelerator, model, optimizer, scheduler
        self.components, self.streams, self.schedule = components, streams, schedule
        self.evaluate, self.settings = evaluate, settings
        self.checkpoint_dir, self.metrics = checkpoint_dir, metrics
        self.evals: list[dict[str, float]] = []
        self.steps_per_objective = {c.name: 0 for c in components.values()}
        self.train_seconds = 0.0
        self.stop_reason: str | None = None

    # --- state --------------------------------------------------------------------------------------------
    def _state(self, step: int) -> dict[str, Any]:
        return {"step": step, "schedule": self.schedule.state_dict(), "evals": self.evals,
                "streams": {str(i): s.state_dict() for i, s in self.streams.items()},
                "steps_per_objective": self.steps_per_objective, "train_seconds": self.train_seconds,
                "stop_reason": self.stop_reason}

    def _resume(self) -> int:
        checkpoint = latest_checkpoint(self.checkpoint_dir)
        if checkpoint is None:
            if self.metrics is not None:
                self.metrics.restart()  # a killed attempt's records belong to no checkpoint: the log starts over
            return 0
        state = load_checkpoint(self.accelerator, checkpoint)
        self.schedule.load_state_dict(state["schedule"])
        for index, stream_state in state["streams"].items():
            self.streams[int(index)].load_state_dict(stream_state)
        self.evals = state["evals"]
        self.steps_per_objective = state["steps_per_objective"]
        self.train_seconds = state["train_seconds"]
        self.stop_reason = state.get("stop_reason")
        if self.metrics is not None:
            self.metrics.truncate_after(state["step"])
        self._say(f"resumed from {checkpoint} (step {state['step']})")
        return int(state["step"])

    def _say(self, message: str) -> None:
        if self.accelerator.is_main_process:
            print(f"[train] {message}")

    def _log(self, step: int, values: dict[str, Any]) -> None:
        if self.metrics is not None and self.accelerator.is_main_process:
            self.metrics.write(step, values)

    # --- one step -----------------------------------------------------------------------------------------
    def _mean_across_ranks(self, value: float) -> float:
        tensor = torch.tensor([value], dtype=torch.float64, device=self.accelerator.device)
        return float(self.accelerator.reduce(tensor, reduction="mean").item())

    def _to_device(self, batch: dict[str, Any]) -> dict[str, Any]:
        device = self.accelerator.device
        return {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}

    def _refresh(self, logged: dict[str, float]) -> Measured:
        """MAXRIGHT: both losses on the batches about to be used, averaged over ranks, become the schedule's gaps
        (and are logged). The objective the schedule expects them to pick (``likely_choice``) is forwarded with
        gradients and the other without; returned is that forward, which the update reuses if the refreshed gaps
        pick it. So a refresh costs one extra forward (two when the guess is wrong; the reference implementation
        always pays two: it measures both without gradients and forwards the trained batch again) and never holds
        two graphs at once."""
        likely = self.schedule.likely_choice()
        measured = {}
        for index in (likely, 1 - likely):
            with torch.set_grad_enabled(index == likely):
                measured[index] = self.components[index].loss(self.model, self._to_device(self.streams[index].peek()))
        losses = [self._mean_across_ranks(float(measured[i][0].detach())) for i in (0, 1)]
        self.schedule.refresh((losses[0], losses[1]))
        logged.update({f"train/refresh_{self.components[i].name}_loss": losses[i] for i in (0, 1)})
        return {likely: measured[likely]}

    def _drop_measured_batches(self, plan: Plan) -> None:
        """After a refresh, consume the batches it measured for objectives the step did not train. Kept, an
        untrained objective's peeked batch would be measured again at every later refresh, so one batch with a low
        loss would hide that objective's gap for the whole run (the reference implementation draws a fresh batch
        of both objectives every step)."""
        for index, stream in self.streams.items():
            if index not in plan:
                stream.skip()

    def _plan(self, step: int, logged: dict[str, float]) -> tuple[Plan, Measured]:
        """The step's plan and, after a MAXRIGHT refresh, the forward of the chosen batch it already made."""
        if not self.schedule.wants_refresh(step):
            return self.schedule.plan(step), {}
        measured = self._refresh(logged)
        plan = self.schedule.plan(step)
        self._drop_measured_batches(plan)
        # a forward the refreshed gaps did not pick is freed here, before the chosen batch is forwarded
        return plan, {i: m for i, m in measured.items() if i in plan}

    def _micro_batch_loss(self, index: int, measured: Measured) -> tuple[torch.Tensor, dict[str, float]]:
        """Objective ``index``'s loss on its next batch: the refresh's forward of that batch when it kept one."""
        batch = self.streams[index].next()  # the batch a refresh peeked, if there was one
        if index in measured:
            return measured.pop(index)
        return self.components[index].loss(self.model, self._to_device(batch))

    def _check_finite(self, loss: torch.Tensor, step: int, name: str) -> None:
        if not torch.isfinite(loss.detach()).all():
            last = latest_checkpoint(self.checkpoint_dir)
            raise NonFiniteLossError(
                f"non-finite {name} loss ({float(loss.detach())}) at optimizer step {step + 1}; training stopped. "
                f"The last good checkpoint is {last or '(none yet)'}; lower stage.train.lr or check the data."
            )

    def _train_step(self, step: int) -> dict[str, float]:
        """``grad_accum`` micro-batches of the objectives the schedule plans, then one optimizer step. A MAXRIGHT
        refresh runs inside the first micro-batch (its forwards belong to that micro-batch) and sets the plan."""
        logged: dict[str, float] = {}
        plan: Plan = {}
        objective_losses: dict[int, float] = {}
        for micro in range(self.settings.grad_accum):
            with self.accelerator.accumulate(self.model):
                measured: Measured = {}
                if micro == 0:
                    plan, measured = self._plan(step, logged)
                    objective_losses = dict.fromkeys(plan, 0.0)
                total: torch.Tensor | float = 0.0
                for index, weight in plan.items():
                    component = self.components[index]
                    loss, values = self._micro_batch_loss(index, measured)
                    self._check_finite(loss, step, component.name)
                    total = total + weight * loss
                    objective_losses[index] += float(loss.detach()) / self.settings.grad_accum
                    logged.update({f"train/{k}": v for k, v in values.items()})
                self.accelerator.backward(total)
                if self.accelerator.sync_gradients and self.settings.max_grad_norm > 0:
                    norm = self.accelerator.clip_grad_norm_(self.model.parameters(), self.settings.max_grad_norm)
                    logged["train/grad_norm"] = float(norm) if norm is not None else math.nan
                self.optimizer.step()
                self.optimizer.zero_grad()
        self.scheduler.step()
        for index in plan:
            name = self.components[index].name
            self.steps_per_objective[name] += 1
            reduced = self._mean_across_ranks(objective_losses[index])
            self.schedule.observe(index, reduced)
            logged[f"train/{name}_objective_loss"] = reduced
        logged["train/objective"] = float(max(plan, key=lambda i: plan[i]))
        logged["train/lr"] = float(self.scheduler.get_last_lr()[0])
        return logged

    def _eval(self, step: int) -> dict[str, float]:
        values = {"step": float(step), **self.evaluate()}
        self.evals.append(values)
        self._log(step, values)
        return values

    # --- the loop -----------------------------------------------------------------------------------------
    def run(self) -> LoopResult:
        """Train to ``max_steps`` (or an early stop) and return what happened."""
        settings = self.settings
        self.model.train()  # from_pretrained returns eval mode; LoRA dropout and gradient checkpointing need train
        start = self._resume()
        if start == 0 and not self.evals:
            self._eval(0)
        bar = tqdm(total=settings.max_steps, initial=start, desc="train", disable=not settings.progress
                   or not self.accelerator.is_main_process)
        step = start
        while step < settings.max_steps and self.stop_reason is None:
            began = time.perf_counter()
            logged = self._train_step(step)
            logged["train/step_seconds"] = time.perf_counter() - began  # MAXRIGHT's refresh included
            self.train_seconds += logged["train/step_seconds"]
            step += 1
            bar.update(1)
            if step % settings.log_every == 0 or step == settings.max_steps:
                self._log(step, logged)
                bar.set_postfix({k.split("/")[-1]: f"{v:.3f}" for k, v in logged.items() if "objective_loss" in k})
            if step % settings.eval_every == 0 or step == settings.max_steps:
                values = self._eval(step)
                self.stop_reason = early_stop_reason(values.get("eval/sft_loss", math.inf), values.get("eval/pref_loss", math.inf),
                                           settings.early_stop_eps, settings.optima, settings.ref_pareto)
            if self.stop_reason or step % settings.save_every == 0 or step == settings.max_steps:
                save_checkpoint(self.accelerator, self.checkpoint_dir, step, self._state(step),
                                settings.keep_checkpoints)
            if self.stop_reason:
                self._say(f"early stop at step {step}: {self.stop_reason}")
        bar.close()
        return LoopResult(steps=step, stop_reason=self.stop_reason or "max_steps", evals=self.evals,
                          steps_per_objective=dict(self.steps_per_objective), seconds=self.train_seconds,
                          seconds_per_step=self.train_seconds / max(1, step))
