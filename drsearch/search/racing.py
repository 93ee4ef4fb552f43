"""The adaptive finalist stage: evidence where it is still open, under a cap on compute.

The fixed stage retrains the top ``k`` trials on every fold whatever their evidence says: a
finalist that misses a constraint by ten standard errors gets as many runs as one a hair from
certified, and the trial ranked ``k + 1`` gets none. This policy races the finalists instead,
round by round, on the same Wilson bounds the objective judges with:

- ``candidates`` trials enter (the best by search value, ``entrants``), each with ``start``
  units (a unit: one fold of the cross-validation partition, or one seed);
- after each round every arm is scored on its pooled evidence (``score``: the study's own
  objective, ``clinical.objective_score``) and closes when the evidence is no longer open:
  ``infeasible`` (a constraint's one-sided upper bound at ``confidence`` lies below its
  minimum, or the primary's below the trivial model's), ``beaten`` (its primary's upper bound
  lies below the lower bound of the leader, the best arm the objective certifies feasible),
  ``certified`` (it is that leader, on at least ``settle`` units, and *certainly* feasible:
  every constraint's lower bound at ``confidence`` at its minimum, a stricter bound than the
  objective's own 90% when ``confidence`` is higher), ``exhausted`` (it has run ``max_units``)
  or ``cap`` (the stage has spent ``cap`` units). Certainly met and certainly failed use the
  same bounds, one from each side; a leader the objective certifies only at its own
  confidence runs on (stopping at the first look that certifies would let a configuration
  just short of a minimum through more often than the objective's 10%);
- open arms get one more unit each (entering arms ``start``), the best current value first,
  as long as the cap allows; the stage is ``done`` when no arm gets a unit.

The crown is the fixed stage's (``crowned``: the best feasible value on each arm's pooled
evidence, ``ranking.search_best``, the objective's own confidence), so what is certified is
what the arm's units trained: with folds, the pooled out-of-fold counts of exactly the models
that ship as the crowned finalist's ensemble.

What it follows: Hoeffding races (Maron & Moore, NIPS 1993: discard a model once its
confidence interval lies below the best one's, spend the runs on those still in contention),
feasible-arm identification (Katz-Samuels & Scott, ICML 2018: sample the arms whose means lie
near the feasible region's boundary) and FIESTA (Moss et al., 2018: adaptive numbers of data
splits and seeds per model). Here the bounds are Wilson's on counts, the feasible region is
the study's constraints and the order is the objective's value; there is no formal error
guarantee across rounds (each look is a fresh test), which ``settle`` and ``confidence`` trade
against compute; ``bench/selection.py`` measures what that costs.

Pure: no I/O, no Optuna; deterministic (ties go to the earlier trial). With folds, run the
folds the search never validated on first and the search's own fold last: its counts chose
the trial (``bench/selection.py`` orders them so).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from drsearch.clinical import (
    PROPORTIONS,
    Judgement,
    Score,
    metric_pairs,
    one_sided_z,
    wilson_interval,
)
from drsearch.ranking import Ranked, by_value, search_best

Reason = Literal["certified", "infeasible", "beaten", "exhausted", "cap", "outside"]
State = Literal["run", "waiting", "closed"]

#: Why an arm closed, one line each (the record's wording).
REASONS: dict[str, str] = {
    "certified": "certified feasible and leading",
    "infeasible": "certainly infeasible: an upper bound lies below its minimum",
    "beaten": "certainly beaten: its primary's upper bound lies below the leader's lower bound",
    "exhausted": "out of units: every fold or seed has run",
    "cap": "the stage's cap is spent",
    "outside": "not among the candidates",
}


@dataclass(frozen=True)
class Arm:
    """A finalist: its trial ``number`` and search value, the ``units`` (folds or seeds) run
    for it so far and the metrics they give (``confusion_matrix`` pooled over the units: counts
    summed over folds); ``metrics`` is ``None`` before any unit."""

    number: int
    search_value: float
    units: int = 0
    metrics: Mapping[str, Any] | None = None


@dataclass(frozen=True)
class RacePolicy:
    """How the stage races.

    ``max_units``: folds K (or seeds) a finalist may run; ``cap``: units the whole stage may
    spend; ``start``: units a finalist first gets; ``candidates``: how many of the best trials
    by search value enter; ``settle``: the fewest units on which a certified leader stops;
    ``confidence``: one-sided confidence of the bounds that close an arm as certainly
    feasible, infeasible or beaten. Defaults: ``start``, ``candidates``, ``settle`` and
    ``confidence`` chosen by a grid on the tuning populations of ``bench/selection.py`` only
    (aptos and hard at every noise level, seed 100; ``bench/selsim/tune.py``), see
    ``bench/README.md`` "Issue 33"; ``cap`` is the fixed stage's default compute (top 3 x 5
    folds = 15 units, a quarter of a 60-trial search), ``max_units`` its folds."""

    max_units: int = 5
    cap: int = 15
    start: int = 1
    candidates: int = 5
    settle: int = 1
    confidence: float = 0.95

    def __post_init__(self) -> None:
        if self.max_units < 1:
            raise ValueError(f"max_units must be at least 1, not {self.max_units}")
        if not 1 <= self.start <= self.max_units:
            raise ValueError(f"start must lie in 1..max_units ({self.max_units}), not {self.start}")
        if not 1 <= self.settle <= self.max_units:
            raise ValueError(f"settle must lie in 1..max_units, not {self.settle}")
        if self.candidates < 1 or self.cap < 0:
            raise ValueError("candidates must be at least 1 and cap at least 0")
        if not 0.5 < self.confidence < 1.0:
            raise ValueError(f"confidence must lie in (0.5, 1), not {self.confidence}")

    def record(self) -> dict[str, Any]:
        return dict(self.__dict__)


@dataclass(frozen=True)
class Decision:
    """One arm this round: ``run`` more units now (0 unless ``state`` is run); ``reason`` why it
    closed; ``note`` the evidence in one line."""

    number: int
    units: int
    run: int
    state: State
    reason: Reason | None = None
    note: str = ""


@dataclass(frozen=True)
class Round:
    """What to run now: a decision per arm (best search value first), the current leader (the
    best certified-feasible arm), units spent so far against the cap, and whether the stage is
    done (no arm gets a unit)."""

    decisions: tuple[Decision, ...]
    leader: int | None
    spent: int
    cap: int
    done: bool
    closed: dict[int, str] = field(default_factory=dict)  # number -> REASONS line

    def more(self) -> dict[int, int]:
        """Units to run now, per trial number (arms that get none left out)."""
        return {d.number: d.run for d in self.decisions if d.run}

    def record(self) -> dict[str, Any]:
        return {
            "leader": self.leader,
            "spent": self.spent,
            "cap": self.cap,
            "done": self.done,
            "arms": [d.__dict__ | {"why": REASONS.get(d.reason or "", "")} for d in self.decisions],
        }


def entrants(trials: Sequence[Ranked], policy: RacePolicy) -> list[Ranked]:
    """The trials that enter the race: the ``candidates`` best by search value (the smooth
    objective, feasible or not), best first; ties go to the earlier trial."""
    return by_value(trials)[: policy.candidates]


@dataclass(frozen=True)
class _View:
    arm: Arm
    score: Score | None
    low: float | None  # the primary's one-sided bounds at the policy's confidence
    high: float | None
    infeasible: str | None  # why it is certainly infeasible, else None


def _primary_bounds(metric: str, metrics: Mapping[str, Any], z: float) -> tuple[float, float]:
    """One-sided bounds of a proportion primary on its counts; (-inf, inf) for a primary that
    is not one proportion (QWK, AUC, a mean): such an arm is never ``beaten``."""
    kind = PROPORTIONS.get(metric, ("", None))[0]
    cm = metrics.get("confusion_matrix")
    if kind != "one" or cm is None:
        return -math.inf, math.inf
    pairs = metric_pairs(metric, cm)
    if not pairs:
        return -math.inf, math.inf
    x, n = pairs[0]
    low, high = wilson_interval(x, n, z) or (0.0, 1.0)
    return low, high


def _bounds(j: Judgement, z: float) -> tuple[float | None, float | None]:
    """A constraint's one-sided bounds at ``z`` on its counts; a mean (balanced accuracy) has
    no single count: its two-sided 95% bounds, the lower one only if the rule gave it."""
    if j.successes is not None and j.n > 0:
        return wilson_interval(j.successes, j.n, z) or (0.0, 1.0)
    return j.lower, j.upper


def _certainly_infeasible(s: Score, high: float, z: float) -> str | None:
    for j in s.judgements:
        upper = _bounds(j, z)[1]
        if upper is not None and upper < j.minimum:
            return f"{j.name}: {j.successes:g}/{j.n:g}, upper bound {upper:.3f}"
    if s.trivial is not None and high <= s.trivial:
        return f"primary's upper bound {high:.3f} <= the trivial model's {s.trivial:.3f}"
    return None


def _certainly_feasible(s: Score, low: float, z: float) -> bool:
    """Feasible by the objective and every constraint's lower bound at ``z`` at its minimum
    (the objective's own confidence may be lower: a leader stops early only on this)."""
    if not s.feasible:
        return False
    for j in s.judgements:
        lower = _bounds(j, z)[0]
        if lower is None or lower < j.minimum:
            return False
    return s.trivial is None or low > s.trivial


def _view(arm: Arm, score: Callable[[Mapping[str, Any]], Score], metric: str, z: float) -> _View:
    if arm.units == 0 or arm.metrics is None:
        return _View(arm, None, None, None, None)
    s = score(arm.metrics)
    low, high = _primary_bounds(metric, arm.metrics, z)
    return _View(arm, s, low, high, _certainly_infeasible(s, high, z))


def next_round(
    arms: Sequence[Arm],
    policy: RacePolicy,
    score: Callable[[Mapping[str, Any]], Score],
    metric: str = "accuracy",
) -> Round:
    """The next round of the race: how many more units each arm runs now and why each closed
    arm closed. ``score`` judges pooled metrics (the study's objective); ``metric`` is its
    primary (its Wilson bounds decide ``beaten``). Stateless: the same arms give the same
    round, so the stage can be resumed from its stored runs."""
    numbers = [a.number for a in arms]
    if len(set(numbers)) != len(numbers):
        raise ValueError("arms: a trial appears twice")
    for a in arms:
        if not 0 <= a.units <= policy.max_units:
            raise ValueError(f"arm {a.number}: {a.units} units, outside 0..{policy.max_units}")
        if a.units > 0 and a.metrics is None:
            raise ValueError(f"arm {a.number}: {a.units} units but no metrics")
    z = one_sided_z(policy.confidence)
    ordered = sorted(arms, key=lambda a: (-a.search_value, a.number))
    racing, outside = ordered[: policy.candidates], ordered[policy.candidates :]
    views = [_view(a, score, metric, z) for a in racing]
    spent = sum(a.units for a in arms)
    judged = [v for v in views if v.score is not None]
    best = search_best([Ranked(v.arm.number, v.score.value, v.score.feasible) for v in judged])  # type: ignore[union-attr]
    lead = next((v for v in judged if best is not None and v.arm.number == best.number), None)
    closed: dict[int, tuple[Reason, str]] = {}
    open_: list[_View] = []
    for v in views:
        a, s = v.arm, v.score
        if s is None:
            open_.append(v)
        elif v.infeasible is not None:
            closed[a.number] = ("infeasible", v.infeasible)
        elif lead is not None and v is not lead and v.high < lead.low:  # type: ignore[operator]
            closed[a.number] = ("beaten", f"upper {v.high:.3f} < leader's lower {lead.low:.3f}")
        elif v is lead and a.units >= policy.settle and _certainly_feasible(s, v.low, z):
            closed[a.number] = ("certified", f"{s.primary:.3f} on {a.units} units, feasible")
        elif a.units >= policy.max_units:
            closed[a.number] = ("exhausted", f"{a.units} units")
        else:
            open_.append(v)
    # fund the open arms: entering ones first (search order), then the best current value
    entering = [v for v in open_ if v.score is None]
    going = sorted(
        (v for v in open_ if v.score is not None),
        key=lambda v: (-v.score.value, -v.arm.search_value, v.arm.number),  # type: ignore[union-attr]
    )
    left = policy.cap - spent
    runs: dict[int, int] = {}
    for v in entering + going:
        want = policy.start if v.arm.units == 0 else 1
        want = min(want, policy.max_units - v.arm.units, max(left, 0))
        if want > 0:
            runs[v.arm.number] = want
            left -= want
    done = not runs
    decisions = []
    for v in views:
        n, units = v.arm.number, v.arm.units
        if n in closed:
            reason, note = closed[n]
            decisions.append(Decision(n, units, 0, "closed", reason, note))
        elif n in runs:
            decisions.append(Decision(n, units, runs[n], "run", None, _note(v)))
        elif left <= 0:
            decisions.append(Decision(n, units, 0, "closed", "cap", _note(v)))
        else:
            decisions.append(Decision(n, units, 0, "waiting", None, _note(v)))
    decisions += [Decision(a.number, a.units, 0, "closed", "outside") for a in outside]
    why = {d.number: REASONS[d.reason] for d in decisions if d.reason is not None}
    leader = None if lead is None else lead.arm.number
    return Round(tuple(decisions), leader, spent, policy.cap, done, why)


def _note(v: _View) -> str:
    if v.score is None:
        return "no evidence yet"
    s = v.score
    state = "feasible" if s.feasible else "open: " + "; ".join(s.reasons)
    return f"{s.primary:.3f} ({v.low:.3f}-{v.high:.3f}) on {v.arm.units} units, {state}"


def crowned(arms: Sequence[Arm], score: Callable[[Mapping[str, Any]], Score]) -> Ranked | None:
    """The crown on the race's evidence: the best feasible value among arms that ran at least
    one unit (``selection.crown``'s rule, the earlier trial of equals); ``None`` when none is
    feasible."""
    judged = []
    for a in arms:
        if a.units > 0 and a.metrics is not None:
            s = score(a.metrics)
            judged.append(Ranked(a.number, s.value, s.feasible))
    return search_best(judged)
