"""The adaptive finalist policy (drsearch/search/racing.py) on hand-built confusion matrices."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import pytest

from drsearch.clinical import Score, objective_score
from drsearch.ranking import Ranked
from drsearch.search.racing import Arm, RacePolicy, crowned, entrants, next_round

CONSTRAINTS = [("sensitivity_pdr", 0.90)]


def score(metrics: Mapping[str, Any]) -> Score:
    return objective_score("accuracy", CONSTRAINTS, dict(metrics), "lower_bound")


def metrics(correct: float, pdr_hits: int, pdr_n: int, n_other: int = 400) -> dict[str, Any]:
    """Grades 0-3: ``n_other`` images each, a share ``correct`` called right (the rest one grade
    up); grade 4: ``pdr_hits`` of ``pdr_n`` called PDR, the others grade 3."""
    cm = np.zeros((5, 5), dtype=int)
    for g in range(4):
        right = round(n_other * correct)
        cm[g, g], cm[g, g + 1] = right, n_other - right
    cm[4, 4], cm[4, 3] = pdr_hits, pdr_n - pdr_hits
    return {"accuracy": float(np.trace(cm) / cm.sum()), "confusion_matrix": cm.tolist()}


def decision(rnd, number):  # noqa: ANN001, ANN201
    return next(d for d in rnd.decisions if d.number == number)


def test_a_certified_leader_closes_a_failing_arm_closes_a_borderline_one_gets_more() -> None:
    arms = [
        Arm(0, 0.90, 2, metrics(0.90, 118, 118)),  # PDR 118/118: certainly >= 0.90
        Arm(1, 0.85, 2, metrics(0.85, 60, 118)),  # 60/118: certainly below
        Arm(2, 0.80, 2, metrics(0.92, 27, 30)),  # 0.90 on 30 images: open either way
    ]
    rnd = next_round(arms, RacePolicy(), score)
    assert rnd.leader == 0
    assert (decision(rnd, 0).state, decision(rnd, 0).reason) == ("closed", "certified")
    assert (decision(rnd, 1).state, decision(rnd, 1).reason) == ("closed", "infeasible")
    assert "sensitivity_pdr" in decision(rnd, 1).note
    assert (decision(rnd, 2).state, decision(rnd, 2).run) == ("run", 1)
    assert rnd.more() == {2: 1} and not rnd.done
    assert rnd.spent == 6 and rnd.cap == RacePolicy().cap


def test_an_arm_whose_primary_cannot_reach_the_leader_is_beaten() -> None:
    leader = Arm(0, 0.9, 3, metrics(0.95, 118, 118, n_other=2000))
    weak = Arm(1, 0.8, 3, metrics(0.60, 110, 118, n_other=2000))  # open on PDR, far behind
    close = Arm(2, 0.7, 3, metrics(0.95, 110, 118, n_other=2000))  # open and near the leader
    rnd = next_round([leader, weak, close], RacePolicy(), score)
    assert decision(rnd, 1).reason == "beaten"
    assert decision(rnd, 2).state == "run"


def test_a_leader_certified_only_at_the_objectives_confidence_keeps_running() -> None:
    # 111/118 = 0.941: its 90% lower bound clears 0.90 (0.906), its 95% one does not (0.894)
    arm = Arm(0, 0.9, 2, metrics(0.9, 111, 118))
    s = score(arm.metrics)  # type: ignore[arg-type]
    assert s.feasible
    rnd = next_round([arm], RacePolicy(confidence=0.95), score)
    assert rnd.leader == 0 and decision(rnd, 0).run == 1
    rnd = next_round([arm], RacePolicy(confidence=0.90), score)
    assert decision(rnd, 0).reason == "certified" and rnd.done


def test_entry_candidates_out_of_units_and_the_cap() -> None:
    policy = RacePolicy(max_units=3, cap=7, start=2, candidates=3)
    arms = [Arm(i, 1.0 - i / 10) for i in range(5)]
    rnd = next_round(arms, policy, score)
    # three enter with 2 units each (6 of 7); the other two are not candidates
    assert rnd.more() == {0: 2, 1: 2, 2: 2}
    assert [decision(rnd, i).reason for i in (3, 4)] == ["outside", "outside"]
    borderline = metrics(0.9, 27, 30)
    arms = [Arm(0, 0.9, 3, borderline), Arm(1, 0.8, 2, borderline), Arm(2, 0.7, 1, borderline)]
    rnd = next_round(arms, policy, score)
    assert decision(rnd, 0).reason == "exhausted"
    assert rnd.more() == {1: 1}  # the one unit left under the cap: the better search value
    assert decision(rnd, 2).reason == "cap"
    full = [Arm(0, 0.9, 3, borderline), Arm(1, 0.8, 3, borderline), Arm(2, 0.7, 1, borderline)]
    assert sum(a.units for a in full) == policy.cap
    rnd = next_round(full, policy, score)
    assert rnd.done and rnd.more() == {}


def _race(policy: RacePolicy, rng: np.random.Generator) -> tuple[list[Arm], list]:
    """A whole race on random arms: each unit adds a fold of counts drawn from the arm's
    truth; returns the final arms and the rounds."""
    truths = [(rng.uniform(0.6, 0.95), rng.uniform(0.8, 1.0)) for _ in range(8)]
    arms = {i: Arm(i, float(rng.uniform(0.5, 0.9))) for i in range(8)}
    folds: dict[int, list[np.ndarray]] = {i: [] for i in arms}
    rounds = []
    while True:
        rnd = next_round(list(arms.values()), policy, score)
        rounds.append(rnd)
        if rnd.done:
            return list(arms.values()), rounds
        for n, more in rnd.more().items():
            acc, pdr = truths[n]
            for _ in range(more):
                folds[n].append(np.array([rng.binomial(80, acc), rng.binomial(12, pdr)]))
            right, hits = np.sum(folds[n], axis=0)
            units = arms[n].units + more
            m = metrics(right / (80 * units), int(hits), 12 * units, n_other=80 * units)
            arms[n] = Arm(n, arms[n].search_value, units, m)


@pytest.mark.parametrize("cap", [0, 3, 9, 15, 40])
def test_the_cap_and_max_units_are_never_exceeded(cap: int) -> None:
    for seed in range(4):
        policy = RacePolicy(max_units=4, cap=cap, candidates=6)
        arms, rounds = _race(policy, np.random.default_rng(seed))
        assert sum(a.units for a in arms) <= cap
        assert all(a.units <= policy.max_units for a in arms)
        assert all(r.spent + sum(r.more().values()) <= cap for r in rounds)
        assert rounds[-1].done


def test_deterministic_whatever_the_order_of_the_arms() -> None:
    arms = [
        Arm(3, 0.8, 1, metrics(0.9, 11, 12)),
        Arm(1, 0.8, 1, metrics(0.9, 11, 12)),  # same value: the earlier trial first
        Arm(2, 0.85, 0),
        Arm(0, 0.7, 2, metrics(0.8, 20, 24)),
    ]
    policy = RacePolicy(cap=5, candidates=4)
    first = next_round(arms, policy, score)
    assert first == next_round(arms, policy, score)
    assert first == next_round(list(reversed(arms)), policy, score)
    assert [d.number for d in first.decisions] == [2, 1, 3, 0]
    assert first.more()[2] == 1  # entering arms first
    a, b = (
        _race(RacePolicy(), np.random.default_rng(9)),
        _race(RacePolicy(), np.random.default_rng(9)),
    )
    assert a == b


def test_crowned_is_the_best_feasible_value_with_evidence() -> None:
    arms = [
        Arm(0, 0.9, 2, metrics(0.80, 118, 118)),
        Arm(1, 0.8, 2, metrics(0.85, 118, 118)),
        Arm(2, 0.95, 2, metrics(0.95, 60, 118)),  # the most accurate, infeasible
        Arm(3, 0.99, 0),  # no evidence
    ]
    won = crowned(arms, score)
    assert won is not None and won.number == 1 and won.feasible
    assert crowned([arms[2], arms[3]], score) is None
    trials = [Ranked(0, 0.5, True), Ranked(1, 0.9, False), Ranked(2, 0.5, False)]
    assert [r.number for r in entrants(trials, RacePolicy(candidates=2))] == [1, 0]


def test_bad_input_is_refused() -> None:
    with pytest.raises(ValueError, match="outside"):
        next_round([Arm(0, 0.5, 6, metrics(0.9, 10, 10))], RacePolicy(), score)
    with pytest.raises(ValueError, match="no metrics"):
        next_round([Arm(0, 0.5, 1)], RacePolicy(), score)
    with pytest.raises(ValueError, match="twice"):
        next_round([Arm(0, 0.5), Arm(0, 0.4)], RacePolicy(), score)
    with pytest.raises(ValueError):
        RacePolicy(start=0)
    with pytest.raises(ValueError):
        RacePolicy(confidence=0.4)
