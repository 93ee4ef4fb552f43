"""What state a stored trial is in, in drsearch's words: the one place that reads it.

Optuna stores five states (COMPLETE, PRUNED, FAIL, RUNNING, WAITING). drsearch tells more apart
within them, by attributes written beside the state: a RUNNING trial *paused* at a rung by
promotion ASHA (``PAUSED_ATTR``: its rung epoch; it needs no runner and counts toward the
budget), a FAIL trial *interrupted* (Ctrl-C, a runner gone: ``fail_reason: interrupted``; it
never counts) or *retried* (replaced by a re-run that names it in ``retry_of``; no longer
counted), and a WAITING trial *queued* (a baseline, a warm start, a re-run, a finalist's run).
``status`` decides it for every reader: the budget's counts, the rung scheduler, the samplers'
view, ``drsearch trials`` and the run's summary.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Collection
from enum import Enum
from typing import Any

from optuna.trial import FrozenTrial, TrialState

#: System attribute of a paused trial: the rung epoch it paused at (``None`` once promoted).
PAUSED_ATTR = "drsearch:paused_at"
#: System attribute of a paused trial: how it would end if never promoted (an ``Outcome``).
PAUSED_OUTCOME_ATTR = "drsearch:paused_outcome"
#: System attribute of a trial promoted to train to the end, never pausing again (the leader
#: finished at the end of a study, or at its time limit).
FINISHING_ATTR = "drsearch:finishing"
#: ``fail_reason`` of a trial cut short by its runner's end, not by its own fault.
INTERRUPTED = "interrupted"
#: User attribute of a re-run: the number of the trial it runs again.
RETRY_OF = "retry_of"


class Status(str, Enum):
    """A trial's state as drsearch counts it."""

    COMPLETE = "complete"
    PRUNED = "pruned"
    FAILED = "failed"  # by its own fault: counts toward the budget
    INTERRUPTED = "interrupted"  # its runner stopped: never counts; its configuration runs again
    RETRIED = "retried"  # failed, and replaced by a re-run: no longer counts
    PAUSED = "paused"  # promotion ASHA holds it at a rung: counts, needs no runner
    RUNNING = "running"
    QUEUED = "queued"  # WAITING: not started yet


def paused_at(trial: FrozenTrial) -> int | None:
    """The rung epoch a paused trial waits at; ``None`` for any other trial."""
    if trial.state != TrialState.RUNNING:
        return None
    epoch = trial.system_attrs.get(PAUSED_ATTR)
    return None if epoch is None else int(epoch)


def retried_numbers(trials: Collection[FrozenTrial]) -> set[int]:
    """The trials that a re-run (queued or started) replaces."""
    return {int(t.user_attrs[RETRY_OF]) for t in trials if RETRY_OF in t.user_attrs}


def is_interrupted(trial: FrozenTrial) -> bool:
    return trial.state == TrialState.FAIL and trial.user_attrs.get("fail_reason") == INTERRUPTED


def status(trial: FrozenTrial, retried: Collection[int] = ()) -> Status:
    """``trial``'s state as drsearch counts it; ``retried``: ``retried_numbers`` of the study
    (a failed trial a re-run replaces is RETRIED)."""
    if trial.state == TrialState.FAIL:
        if is_interrupted(trial):
            return Status.INTERRUPTED
        return Status.RETRIED if trial.number in retried else Status.FAILED
    if trial.state == TrialState.RUNNING:
        return Status.PAUSED if paused_at(trial) is not None else Status.RUNNING
    return {
        TrialState.COMPLETE: Status.COMPLETE,
        TrialState.PRUNED: Status.PRUNED,
        TrialState.WAITING: Status.QUEUED,
    }[trial.state]


def epochs_done(trial: FrozenTrial) -> int | None:
    """Epochs a trial trained: what it recorded when it ended, else its curve so far (a paused
    or running trial: the last epoch it reported)."""
    recorded: Any = trial.user_attrs.get("epochs_completed")
    if recorded is not None:
        return int(recorded)
    return max(trial.intermediate_values) if trial.intermediate_values else None


def as_it_stands(trial: FrozenTrial) -> FrozenTrial:
    """A paused trial with the user attributes of the outcome it paused with (its best epoch so
    far, its run folder, its metrics: what it would end with if pruned at its rung), so it can
    be shown or exported as it stands; any other trial as it is."""
    raw = trial.system_attrs.get(PAUSED_OUTCOME_ATTR) if paused_at(trial) is not None else None
    if not raw:
        return trial
    view = copy.copy(trial)
    view.user_attrs = {**json.loads(raw).get("user_attrs", {}), **trial.user_attrs}
    return view
