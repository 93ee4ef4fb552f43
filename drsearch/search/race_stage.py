"""The finalist race of a study: ``search/racing.py``'s policy over the runs a study stores.

With ``finalists: {race: true}`` the finalist stage runs in rounds. Before each, under the
study lock, every candidate's evidence is read back from its complete confirmation runs (the
pooled out-of-fold predictions of its folds, or its seeds' mean counts: the same
``selection._confirmed_metrics`` the record scores with) and ``racing.next_round`` says which
candidates get how many more units; those runs are queued (a fold: the folds the search
never validated on first, its own fold 0 last). A new round is decided only once no run of
the stage waits or runs (a round barrier: several runners agree on the evidence it rests
on), so the race is a function of the stored runs alone: a killed runner, a Ctrl-C, a second
runner or the next ``drsearch run`` continues it where it stands. The stage ends when a round
queues nothing; the crown is the fixed stage's rule on each candidate's pooled evidence, and
the crowned candidate's runs are what ships (``search/shipping.py``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from optuna.trial import FrozenTrial, TrialState

from drsearch.config.study import LoadedStudy
from drsearch.errors import ConfigError
from drsearch.search.racing import Arm, Round, next_round

if TYPE_CHECKING:
    from drsearch.search.selection import Plan

#: Companion states that hold a round open: its runs are not all in yet.
OPEN = (TrialState.WAITING, TrialState.RUNNING)


def unit_runs(plan: Plan, loaded: LoadedStudy, trial: FrozenTrial) -> list[dict[str, Any]]:
    """A candidate's runs in the order the race spends them: folds 1..K-1, then the search's
    own fold 0 (its counts chose the trial); seeds in order."""
    from drsearch.search.selection import _runs_wanted

    runs = _runs_wanted(plan, loaded, trial)
    if plan.mode == "folds":
        runs = runs[1:] + runs[:1]
    return runs


def done_runs(
    plan: Plan, loaded: LoadedStudy, trial: FrozenTrial, runs: list[FrozenTrial]
) -> list[FrozenTrial]:
    """The candidate's complete runs, as the record takes them (``selection.complete_runs``)."""
    from drsearch.search.selection import _key, _run_key, complete_runs

    keys = {_key(r) for r in unit_runs(plan, loaded, trial)}
    return complete_runs([t for t in runs if _run_key(t) in keys])


def arms(
    plan: Plan, loaded: LoadedStudy, chosen: list[FrozenTrial], runs: list[FrozenTrial]
) -> list[Arm]:
    """Each candidate as an arm of the race, with its evidence so far. A candidate whose runs
    cannot be read back (a run folder lost) has none: it cannot be crowned on it."""
    from drsearch.search.selection import _confirmed_metrics

    out = []
    for trial in chosen:
        done = done_runs(plan, loaded, trial, runs)
        metrics = None
        if done:
            try:
                metrics = _confirmed_metrics(plan, done)[0]
            except ConfigError:
                done = []
        out.append(Arm(trial.number, float(trial.value or 0.0), len(done), metrics))
    return out


def current_round(
    plan: Plan, loaded: LoadedStudy, chosen: list[FrozenTrial], runs: list[FrozenTrial]
) -> Round:
    assert plan.race is not None
    objective = loaded.config.objective
    return next_round(arms(plan, loaded, chosen, runs), plan.race, objective.score,
                      objective.metric)  # fmt: skip


def to_queue(
    plan: Plan,
    loaded: LoadedStudy,
    chosen: list[FrozenTrial],
    runs: list[FrozenTrial],
    stands: dict[tuple[Any, ...], Any],
) -> list[tuple[FrozenTrial, dict[str, Any]]]:
    """The runs the next round queues (under the study lock): none while a run of this round
    still waits or runs; else each funded candidate's next units that no run stands for."""
    from drsearch.search.selection import _key

    if race_open(runs):
        return []
    more = current_round(plan, loaded, chosen, runs).more()
    out = []
    for trial in chosen:
        free = [r for r in unit_runs(plan, loaded, trial) if _key(r) not in stands]
        out += [(trial, r) for r in free[: more.get(trial.number, 0)]]
    return out


def race_open(runs: list[FrozenTrial]) -> bool:
    """Whether a run of the stage still waits or runs."""
    return any(t.state in OPEN for t in runs)
