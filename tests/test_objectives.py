"""Objective schedules: hand-computed choices, λ limits, determinism and checkpointed state."""

from __future__ import annotations

import pytest

from alignment.objectives import (
    Alright,
    Maxright,
    Mix,
    Sequential,
    SingleObjective,
    make_schedule,
    objective_order,
)
from alignment.train.setup import sequential_switch_step


def test_alright_frequency_and_limits():
    plans = [Alright(0.3, seed=5).plan(step) for step in range(1)]
    assert plans[0] in ({0: 1.0}, {1: 1.0})
    schedule = Alright(0.3, seed=5)
    picks = [next(iter(schedule.plan(step))) for step in range(4000)]
    assert abs(sum(picks) / len(picks) - 0.3) < 0.03  # P(objective 1) = λ
    assert all(next(iter(Alright(0.0, seed=1).plan(s))) == 0 for s in range(200))  # λ=0: pure objective 0
    assert all(next(iter(Alright(1.0, seed=1).plan(s))) == 1 for s in range(200))  # λ=1: pure objective 1


def test_alright_same_seed_same_draws_and_state_resumes():
    a, b = Alright(0.5, seed=11), Alright(0.5, seed=11)
    assert [a.plan(s) for s in range(50)] == [b.plan(s) for s in range(50)]  # what every rank computes
    state = a.state_dict()
    expected = [a.plan(s) for s in range(50, 80)]
    resumed = Alright(0.5, seed=999)
    resumed.load_state_dict(state)
    assert [resumed.plan(s) for s in range(50, 80)] == expected


def test_maxright_picks_largest_weighted_gap_by_hand():
    schedule = Maxright(lambd=0.25, optima=(1.0, 0.1), refresh_every=3)
    assert schedule.wants_refresh(0)
    schedule.refresh((2.0, 0.9))
    # gaps: 0.75 * (2.0 - 1.0) = 0.75 ; 0.25 * (0.9 - 0.1) = 0.2  -> objective 0
    assert schedule.gaps == pytest.approx([0.75, 0.2])
    assert schedule.plan(0) == {0: 1.0}
    schedule.observe(0, 1.2)  # 0.75 * 0.2 = 0.15 < 0.2 -> objective 1 next (stale gap of 1 kept)
    assert schedule.gaps == pytest.approx([0.15, 0.2])
    assert schedule.plan(1) == {1: 1.0}
    assert not schedule.wants_refresh(1) and not schedule.wants_refresh(2) and schedule.wants_refresh(3)
    schedule.refresh((1.0, 2.1))  # 0.0 vs 0.5 -> objective 1
    assert schedule.plan(3) == {1: 1.0}
    tie = Maxright(lambd=0.5, optima=(0.0, 0.0), refresh_every=1)
    tie.refresh((1.0, 1.0))  # 0.5 vs 0.5: a tie goes to objective 0, as in the reference implementation
    assert tie.plan(0) == {0: 1.0}
    restored = Maxright(lambd=0.25, optima=(1.0, 0.1), refresh_every=3)
    restored.load_state_dict(schedule.state_dict())
    assert restored.gaps == schedule.gaps


def test_maxright_expects_a_refresh_to_pick_the_objective_measured_least_lately():
    schedule = Maxright(lambd=0.5, optima=(0.0, 0.0), refresh_every=4)
    assert schedule.likely_choice() == 0  # nothing measured yet
    schedule.refresh((1.0, 3.0))
    assert schedule.likely_choice() == 0  # both just measured
    for _ in range(3):
        schedule.observe(1, 2.9)  # objective 1 trained three times
    assert schedule.ages == [3, 0] and schedule.likely_choice() == 0
    assert schedule.plan(3) == {1: 1.0}  # the guess never changes the choice: gaps 0.5 vs 1.45
    restored = Maxright(lambd=0.5, optima=(0.0, 0.0), refresh_every=4)
    restored.load_state_dict(schedule.state_dict())
    assert restored.ages == [3, 0] and restored.likely_choice() == 0


def test_maxright_needs_losses_before_planning():
    with pytest.raises(RuntimeError, match="refresh"):
        Maxright(0.5, (0.0, 0.0), 5).plan(0)


def test_sequential_mix_single():
    assert [next(iter(Sequential(3).plan(s))) for s in range(6)] == [0, 0, 0, 1, 1, 1]
    assert [next(iter(Sequential(2, first=1).plan(s))) for s in range(4)] == [1, 1, 0, 0]
    assert Mix(0.25).plan(0) == {0: 0.75, 1: 0.25}
    assert Mix(0.0).plan(0) == {0: 1.0} and Mix(1.0).plan(0) == {1: 1.0}
    assert SingleObjective(1).plan(7) == {1: 1.0}


def test_make_schedule_names_and_switch_step():
    order = ("sft", "preference")
    for name in ("sft", "preference", "sequential", "mix", "alright", "maxright"):
        make_schedule(name, order, 0.5, 0, 5, "sft", {}, 2)
    with pytest.raises(ValueError, match="unknown objective"):
        make_schedule("bogus", order, 0.5, 0, 5, "sft", {}, 2)
    assert sequential_switch_step("steps", 0.5, 100, 7) == 50
    assert sequential_switch_step("epochs", 0.5, 100, 7) == 49  # round(0.5 * 100/7) = 7 epochs of 7 steps
    assert sequential_switch_step("steps", 0.001, 100, 7) == 1  # each objective keeps at least one step


def test_objectives_are_keyed_by_name_whatever_their_order():
    """λ weighs the preference objective and each gap uses its own optimum, in either order."""
    assert objective_order(["sft", "preference"]) == objective_order(["preference", "sft"]) == ("sft", "preference")
    assert objective_order(["kd", "sft"]) == ("sft", "kd")  # no preference objective: λ weighs kd
    assert objective_order(["kd", "preference"]) == ("kd", "preference")
    with pytest.raises(ValueError, match="two different"):
        objective_order(["sft", "sft"])
    optima = {"sft": 1.0, "preference": 0.1}
    for listed in (["sft", "preference"], ["preference", "sft"]):
        order = objective_order(listed)
        maxright = make_schedule("maxright", order, 0.25, 0, 5, listed[0], optima, 3)
        assert isinstance(maxright, Maxright)
        maxright.refresh((2.0, 0.9))  # losses in `order`: sft 2.0, preference 0.9
        assert maxright.gaps == pytest.approx([0.75 * 1.0, 0.25 * 0.8])  # (1-λ)(f_sft - f*_sft), λ(f_pref - f*_pref)
        picks = [make_schedule("alright", order, 0.3, 5, 5, listed[0], {}, 3) for _ in range(1)][0]
        preference_share = sum(order[next(iter(picks.plan(s)))] == "preference" for s in range(4000)) / 4000
        assert abs(preference_share - 0.3) < 0.03
        assert make_schedule("preference", order, 0.5, 0, 5, listed[0], {}, 3).plan(0) == {order.index("preference"): 1.0}
        sequential = make_schedule("sequential", order, 0.5, 0, 2, listed[0], {}, 3)
        assert [order[next(iter(sequential.plan(s)))] for s in range(4)] == [listed[0]] * 2 + [listed[1]] * 2
