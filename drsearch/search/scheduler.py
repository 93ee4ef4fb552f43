"""The rung scheduler: every stopping and promotion decision of a study, and its state.

``RungScheduler`` is the one place ASHA is decided (after Syne Tune's ``RungSystem``): after
each epoch it says continue, stop (``pruner.max_epochs``), prune (stopping ASHA) or pause
(promotion ASHA); it pauses, promotes and finally prunes paused trials. Its state lives in
the study (each trial's curve, ``PAUSED_ATTR`` and ``PAUSED_OUTCOME_ATTR``), so every runner
of the study shares it and it survives any of them; the functions below are its pure rules.

Stopping ASHA (the default, Optuna's ``SuccessiveHalvingPruner``) drops a trial at a rung
unless it is in the top ``1/eta`` of the trials that reached the rung *so far*: an early
trial is judged against few others, a late one against many. Promotion-based ASHA (Li et al.,
"A System for Massively Parallel Hyperparameter Tuning", 2020; Syne Tune's
``type="promotion"``) never drops a trial while the study goes on: at a rung it goes on only if
it is in the top ``1/eta`` of that rung now, else it *pauses* (its checkpoint stays on disk).
Whenever a worker is free, the best paused trial that has come into the top ``1/eta`` of its
rung since (the rung grew) is *promoted*: resumed from its checkpoint, with its optimizer and
scheduler state, to the next rung. New trials start only when nothing can be promoted. Once
the budget is claimed and nothing runs, the trials still paused are PRUNED at their rung.

A paused trial stays RUNNING in the Optuna study, with ``PAUSED_ATTR`` (its rung epoch); it
needs no live runner, counts toward the budget (it was claimed once) and is never reaped as
interrupted. Every write happens under the study's lock.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import asdict
from typing import TYPE_CHECKING, Literal

from optuna.trial import FrozenTrial, TrialState

from drsearch.config.study import PrunerConfig
from drsearch.search.trial import Outcome
from drsearch.states import (
    FINISHING_ATTR,
    PAUSED_ATTR,
    PAUSED_OUTCOME_ATTR,
    is_interrupted,
    paused_at,
)

if TYPE_CHECKING:
    from drsearch.search.store import StudyStore

#: What happens to a trial after an epoch.
Decision = Literal["continue", "stop", "prune", "pause"]


def promotes(pruner: PrunerConfig) -> bool:
    """Whether the study runs promotion ASHA."""
    return pruner.enabled and pruner.mode == "promotion"


def rungs(pruner: PrunerConfig, max_epochs: int) -> list[int]:
    """The rung epochs below ``max_epochs``: ``grace * eta**k``."""
    out, epoch = [], pruner.grace_period
    while epoch < max_epochs:
        out.append(epoch)
        epoch *= pruner.reduction_factor
    return out


def rung_members(trials: Sequence[FrozenTrial], epoch: int) -> list[tuple[float, int]]:
    """``(value at the rung, trial number)`` of every trial that reached the rung epoch, best
    first (the earlier trial first among equals). An interrupted trial is left out: its
    configuration runs again and reports the same epochs as its re-run (counted once)."""
    members = [
        (t.intermediate_values[epoch], t.number)
        for t in trials
        if t.state != TrialState.WAITING
        and epoch in t.intermediate_values
        and not is_interrupted(t)
    ]
    return sorted(members, key=lambda m: (-m[0], m[1]))


def top_of_rung(trials: Sequence[FrozenTrial], epoch: int, eta: int) -> set[int]:
    """The numbers of the trials in the top ``floor(n / eta)`` of the rung at ``epoch``."""
    members = rung_members(trials, epoch)
    return {n for _, n in members[: len(members) // eta]}


def in_top(trials: Sequence[FrozenTrial], number: int, epoch: int, eta: int) -> bool:
    """Whether trial ``number`` is in the top ``floor(n / eta)`` of the rung at ``epoch``."""
    return number in top_of_rung(trials, epoch, eta)


def next_promotion(trials: Sequence[FrozenTrial], eta: int) -> FrozenTrial | None:
    """The paused trial to resume next: from the highest rung down, the best paused trial in
    the top ``1/eta`` of its rung; ``None`` when none qualifies."""
    paused = [(paused_at(t), t) for t in trials]
    candidates = [(epoch, t) for epoch, t in paused if epoch is not None]
    for epoch in sorted({epoch for epoch, _ in candidates}, reverse=True):
        here = sorted(
            (t for e, t in candidates if e == epoch),
            key=lambda t: (-t.intermediate_values.get(epoch, float("-inf")), t.number),
        )
        top = top_of_rung(trials, epoch, eta)  # once per rung, not once per paused trial
        for t in here:
            if t.number in top:
                return t
    return None


def _running(trials: Sequence[FrozenTrial]) -> bool:
    """Whether a trial runs (RUNNING and not paused at a rung)."""
    return any(t.state == TrialState.RUNNING and paused_at(t) is None for t in trials)


def end_leader(trials: Sequence[FrozenTrial]) -> FrozenTrial | None:
    """Once the budget is claimed and nothing runs: the best paused trial of the highest rung
    that holds paused trials, unless some trial already completed past that rung. Pruning it
    would end a study whose rungs never filled (fewer than ``eta**k`` trials reached the top)
    with no COMPLETE trial at all: it is finished instead (trained to the end)."""
    paused = [(paused_at(t), t) for t in trials]
    paused = [(e, t) for e, t in paused if e is not None]
    if not paused:
        return None
    top = max(e for e, _ in paused)
    if any(
        t.state == TrialState.COMPLETE and max(t.intermediate_values, default=0) > top
        for t in trials
    ):
        return None
    here = [t for e, t in paused if e == top]
    return min(here, key=lambda t: (-t.intermediate_values.get(top, float("-inf")), t.number))


class RungScheduler:
    """ASHA for one study: stopping (Optuna's ``SuccessiveHalvingPruner`` on the stored
    curves) or promotion (pause, promote, prune the paused at the end); ``pruner.max_epochs``
    too. Stateless itself: its state is the study's, read and written through ``store``."""

    def __init__(self, store: StudyStore, max_epochs: int) -> None:
        self.store, self.max_epochs = store, max_epochs
        self.pruner = store.config.pruner
        self.promotes = promotes(self.pruner)
        self.eta = self.pruner.reduction_factor

    @property
    def rungs(self) -> list[int]:
        return rungs(self.pruner, self.max_epochs)

    def on_epoch(
        self, trial_id: int, number: int, epoch: int, replayed: bool, recipe_epochs: int
    ) -> Decision:
        """The decision after ``epoch`` (its value already recorded in the study): ``stop``
        at ``max_epochs`` before the recipe's last epoch; ``pause`` (promotion) at a rung
        outside the rung's top ``1/eta`` now (a replayed epoch never pauses); ``prune``
        (stopping) when Optuna's pruner says so; else ``continue``."""
        if epoch >= self.max_epochs:
            return "stop" if self.max_epochs < recipe_epochs else "continue"
        if self.promotes:
            if replayed or epoch not in self.rungs:
                return "continue"
            if self.store.storage.get_trial_system_attrs(trial_id).get(FINISHING_ATTR):
                return "continue"  # promoted at the end to finish: never pauses again
            trials = self.store.study.get_trials(deepcopy=False)
            return "continue" if in_top(trials, number, epoch, self.eta) else "pause"
        s = self.store
        pruned = s.study.pruner.prune(s.study, s.storage.get_trial(trial_id))
        return "prune" if pruned else "continue"

    def pause(self, trial_id: int, epoch: int, outcome: Outcome) -> None:
        """Leave a trial RUNNING at its rung, to be promoted or pruned later (the runner that
        ran it stays recorded; no runner is needed for a paused trial to stay alive);
        ``outcome`` is how it ends if it never is (written then by ``prune_paused``). The
        runner holds it until its rung is written (Ctrl-C in between still lets it go)."""
        s = self.store
        if s.is_finished(trial_id):
            s.let_go(trial_id)
            return
        attrs = outcome.user_attrs
        kept = {k: attrs[k] for k in ("wall_seconds", "promotions") if k in attrs}
        s.set_user_attrs(trial_id, kept)  # what a promotion carries on
        s.storage.set_trial_system_attr(trial_id, PAUSED_OUTCOME_ATTR, json.dumps(asdict(outcome)))
        s.storage.set_trial_system_attr(trial_id, PAUSED_ATTR, epoch)
        s.let_go(trial_id)

    def promote(self) -> FrozenTrial | None:
        """Take the paused trial that ``next_promotion`` names for this runner, atomically
        across runners (as it was read under the lock: its parameters and attributes);
        ``None`` when none qualifies."""
        s = self.store
        with s.lock.hold():
            trials = s.study.get_trials(deepcopy=False)
            chosen = next_promotion(trials, self.eta)
            finishing = False
            if chosen is None and s.budget_claimed() and not _running(trials):
                chosen, finishing = end_leader(trials), True
            if chosen is None:
                return None
            s.hold(chosen._trial_id, promoted_from=paused_at(chosen))
            s.storage.set_trial_system_attr(chosen._trial_id, PAUSED_ATTR, None)
            if finishing:
                s.storage.set_trial_system_attr(chosen._trial_id, FINISHING_ATTR, True)
        return chosen

    def finish_leader(self, fits: Callable[[FrozenTrial], bool]) -> FrozenTrial | None:
        """At the time limit (``deadline.Deadline``): when no trial of the study runs, take the
        ``end_leader`` to train to the end, if ``fits`` it (its time to finish within the
        grace); ``None`` when a trial still runs, when no leader needs finishing (a trial
        completed past the highest paused rung, or nothing is paused) or when it does not fit.
        Atomically across runners, as ``promote``."""
        s = self.store
        with s.lock.hold():
            s.reap_locked()
            trials = s.study.get_trials(deepcopy=False)
            if _running(trials):
                return None
            leader = end_leader(trials)
            if leader is None or not fits(leader):
                return None
            s.hold(leader._trial_id, promoted_from=paused_at(leader))
            s.storage.set_trial_system_attr(leader._trial_id, PAUSED_ATTR, None)
            s.storage.set_trial_system_attr(leader._trial_id, FINISHING_ATTR, True)
        return leader

    def prune_paused(self, wait: bool = True) -> list[tuple[int, Outcome]] | None:
        """When nothing runs (no trial is left to grow a rung), prune every paused trial with
        the outcome it paused with (through the one finish path); their numbers and outcomes.
        ``None`` while a trial still runs (it may make a paused one promotable: wait), while
        a paused trial is promotable after all (checked again here, under the lock: a trial
        that finished since this runner last asked may have made one so), and while the
        ``end_leader`` is to be finished; ``promote`` then takes it. Without ``wait`` (the
        study left promotion ASHA: nothing will resume them) they are pruned at once."""
        s = self.store
        with s.lock.hold():
            s.reap_locked()
            every = s.study.get_trials(deepcopy=False)
            trials = [t for t in every if t.state == TrialState.RUNNING]
            if wait and any(paused_at(t) is None for t in trials):
                return None
            if wait and (next_promotion(every, self.eta) or end_leader(every)) is not None:
                return None
            pruned = []
            for t in trials:
                if paused_at(t) is None:
                    continue
                outcome = Outcome(**json.loads(t.system_attrs[PAUSED_OUTCOME_ATTR]))
                s.finish(t._trial_id, outcome, {})
                pruned.append((t.number, outcome))
        return pruned
