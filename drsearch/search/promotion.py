"""Promotion-based ASHA (``pruner.mode: promotion``): the rule for pausing and promoting.

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
interrupted. The functions here are pure: ``StudyStore`` applies them under the study's lock.
"""

from __future__ import annotations

from collections.abc import Sequence

from optuna.trial import FrozenTrial, TrialState

from drsearch.config.study import PrunerConfig

#: System attribute of a paused trial: the rung epoch it paused at (``None`` once promoted).
PAUSED_ATTR = "drsearch:paused_at"

#: System attribute of a paused trial: how it would end if never promoted (an ``Outcome``).
PAUSED_OUTCOME_ATTR = "drsearch:paused_outcome"


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


def paused_at(trial: FrozenTrial) -> int | None:
    if trial.state != TrialState.RUNNING:
        return None
    epoch = trial.system_attrs.get(PAUSED_ATTR)
    return None if epoch is None else int(epoch)


def rung_members(trials: Sequence[FrozenTrial], epoch: int) -> list[tuple[float, int]]:
    """``(value at the rung, trial number)`` of every trial that reached the rung epoch, best
    first (the earlier trial first among equals)."""
    members = [
        (t.intermediate_values[epoch], t.number)
        for t in trials
        if t.state != TrialState.WAITING and epoch in t.intermediate_values
    ]
    return sorted(members, key=lambda m: (-m[0], m[1]))


def in_top(trials: Sequence[FrozenTrial], number: int, epoch: int, eta: int) -> bool:
    """Whether trial ``number`` is in the top ``floor(n / eta)`` of the rung at ``epoch``."""
    members = rung_members(trials, epoch)
    return number in {n for _, n in members[: len(members) // eta]}


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
        for t in here:
            if in_top(trials, t.number, epoch, eta):
                return t
    return None
