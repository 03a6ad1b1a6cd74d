"""How two objectives are combined per optimizer step: single, sequential, mix, ALRIGHT, MAXRIGHT.

Objectives are named (``sft``, ``preference``, ``kd``) and indexed 0 and 1 in the order :func:`objective_order`
gives: index 1 is the objective λ (``lambd``) weighs — the preference objective, as in the ALRIGHT/MAXRIGHT
paper (arXiv 2410.15483), or ``kd`` when there is none — whatever order a config lists them in. A schedule's
``plan(step)`` returns the objectives to train at that optimizer step with their loss weights; every
gradient-accumulation micro-batch of the step uses the same plan, so objectives never mix inside one step.

Every decision is a pure function of the schedule's own state, identical on every rank by construction:
ALRIGHT draws from a dedicated ``torch.Generator`` seeded identically everywhere, MAXRIGHT compares loss
values that the trainer all-reduces before handing them over.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import torch

Plan = dict[int, float]  # objective index -> loss weight
OBJECTIVE_NAMES = ("sft", "preference", "kd")
WEIGHTED_BY_LAMBDA = ("preference", "kd")  # λ weighs the first of these present


def objective_order(names: Sequence[str]) -> tuple[str, str]:
    """The two objectives as (index 0, index 1), index 1 being the one λ weighs: ``preference`` if present, else
    ``kd``. ``["preference", "sft"]`` and ``["sft", "preference"]`` give the same order, so λ never silently
    becomes the SFT weight."""
    if len(names) != 2 or len(set(names)) != 2 or not set(names) <= set(OBJECTIVE_NAMES):
        raise ValueError(f"two different objectives of {list(OBJECTIVE_NAMES)} are needed (got {list(names)})")
    weighted = next(name for name in WEIGHTED_BY_LAMBDA if name in names)
    other = next(name for name in names if name != weighted)
    return other, weighted


class ObjectiveSchedule(Protocol):
    """Chooses what to train at each optimizer step; checkpointed with ``state_dict``."""

    def plan(self, step: int) -> Plan: ...

    def wants_refresh(self, step: int) -> bool: ...

    def refresh(self, losses: tuple[float, float]) -> None: ...

    def likely_choice(self) -> int: ...

    def observe(self, index: int, loss: float) -> None: ...

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: dict[str, Any]) -> None: ...


class _Stateless:
    """Default no-op parts of the protocol for schedules that only look at ``step``."""

    def wants_refresh(self, step: int) -> bool:
        return False

    def refresh(self, losses: tuple[float, float]) -> None:
        return None

    def likely_choice(self) -> int:
        return 0

    def observe(self, index: int, loss: float) -> None:
        return None

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        return None


@dataclass
class SingleObjective(_Stateless):
    """Train one objective only (``objective=sft`` -> 0, ``objective=preference`` -> 1)."""

    index: int

    def plan(self, step: int) -> Plan:
        return {self.index: 1.0}


@dataclass
class Sequential(_Stateless):
    """Objective ``first`` for steps ``[0, switch_step)``, then the other one: one budget, split in two."""

    switch_step: int
    first: int = 0

    def plan(self, step: int) -> Plan:
        return {self.first if step < self.switch_step else 1 - self.first: 1.0}


@dataclass
class Mix(_Stateless):
    """(1−λ)·f_0 + λ·f_1 every step, one batch of each (the paper's costly baseline, ~2× per step)."""

    lambd: float

    def plan(self, step: int) -> Plan:
        return {index: weight for index, weight in ((0, 1.0 - self.lambd), (1, self.lambd)) if weight > 0}


class Alright(_Stateless):
    """ALRIGHT: each optimizer step trains objective 1 with probability λ, else objective 0, unscaled.

    One uniform draw per step from a generator seeded with ``seed`` on every rank, so all ranks agree without
    communication; its state is checkpointed so a resumed run draws the same sequence.
    """

    def __init__(self, lambd: float, seed: int):
        self.lambd = lambd
        self.generator = torch.Generator().manual_seed(seed)

    def plan(self, step: int) -> Plan:
        draw = float(torch.rand(1, generator=self.generator).item())
        return {1 if draw < self.lambd else 0: 1.0}

    def state_dict(self) -> dict[str, Any]:
        return {"generator": self.generator.get_state().tolist()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.generator.set_state(torch.tensor(state["generator"], dtype=torch.uint8))


class Maxright:
    """MAXRIGHT: train the objective with the largest weighted optimality gap w_i·(f_i − f_i*).

    Weights are (1−λ, λ). Gaps are stale: the trained objective's gap is refreshed with its (pre-update) loss
    every step through ``observe``; both are recomputed every ``refresh_every`` steps (and at step 0) through
    ``refresh``. Ties go to objective 0, as in the reference implementation. ``ages`` counts the steps since each
    gap was last measured; it only guides which forward a refresh keeps (``likely_choice``), never the choice.
    """

    def __init__(self, lambd: float, optima: tuple[float, float], refresh_every: int):
        self.weights = (1.0 - lambd, lambd)
        self.optima = optima
        self.refresh_every = refresh_every
        self.gaps: list[float] | None = None
        self.ages = [0, 0]

    def _gap(self, index: int, loss: float) -> float:
        return self.weights[index] * (loss - self.optima[index])

    def wants_refresh(self, step: int) -> bool:
        return self.gaps is None or step % self.refresh_every == 0

    def refresh(self, losses: tuple[float, float]) -> None:
        self.gaps = [self._gap(0, losses[0]), self._gap(1, losses[1])]
        self.ages = [0, 0]

    def plan(self, step: int) -> Plan:
        if self.gaps is None:
            raise RuntimeError("MAXRIGHT needs refresh() with both losses before the first plan()")
        return {0 if self.gaps[0] >= self.gaps[1] else 1: 1.0}

    def likely_choice(self) -> int:
        """The objective a refresh about to run is likely to pick: the one whose gap is oldest (objective 0 before
        any gap is known or when both are as old). A refresh forwards it with gradients, so the update can reuse
        that forward when the refreshed gaps pick it.

        Between refreshes an objective is trained while its gap, re-measured every step, stays the larger, so the
        stale gaps pick the objective with the oldest gap only when they have just switched to it. A refresh also
        switches to it when its loss rose while the other was trained, which is what conflicting objectives do;
        so the objective measured least lately is the better guess, and a wrong guess costs one forward."""
        if self.gaps is None or self.ages[0] == self.ages[1]:
            return 0
        return 0 if self.ages[0] > self.ages[1] else 1

    def observe(self, index: int, loss: float) -> None:
        if self.gaps is not None:
            self.gaps[index] = self._gap(index, loss)
            self.ages[index] = 0
            self.ages[1 - index] += 1

    def state_dict(self) -> dict[str, Any]:
        return {"gaps": self.gaps, "ages": self.ages}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.gaps = state["gaps"]
        self.ages = list(state.get("ages", [0, 0]))  # checkpoints written before ages were kept


def make_schedule(name: str, order: tuple[str, str], lambd: float, seed: int, switch_step: int, first: str,
                  optima: Mapping[str, float], refresh_every: int) -> ObjectiveSchedule:
    """The schedule for ``objective.name`` (sft, preference, sequential, mix, alright, maxright).

    ``order`` is :func:`objective_order` of the objectives; ``first`` the one a sequential run trains first;
    ``optima`` f* by objective name (MAXRIGHT; a missing one counts as 0, as in the reference implementation).
    """
    schedules: dict[str, Any] = {
        "sft": lambda: SingleObjective(order.index("sft")),
        "preference": lambda: SingleObjective(order.index("preference")),
        "sequential": lambda: Sequential(switch_step=switch_step, first=order.index(first)),
        "mix": lambda: Mix(lambd),
        "alright": lambda: Alright(lambd, seed),
        "maxright": lambda: Maxright(lambd, (optima.get(order[0], 0.0), optima.get(order[1], 0.0)), refresh_every),
    }
    if name not in schedules:
        raise ValueError(f"unknown objective schedule {name!r}; choose one of {sorted(schedules)}")
    if name in order or name not in ("sft", "preference"):
        schedule: ObjectiveSchedule = schedules[name]()
        return schedule
    raise ValueError(f"objective={name} trains the {name!r} objective, which is not one of {list(order)}")
