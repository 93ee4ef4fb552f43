"""The in-process executor: the same objective as Ray, Optuna's ASHA pruner, one trial at a time.

For debugging and for machines without Ray.
"""

from __future__ import annotations

import time
from typing import Any

from drsearch.objective import PruneSignal, execute_trial
from drsearch.runners.common import (
    StudyProgress,
    TrialContext,
    finish_trial,
    record_epoch,
    start_trial,
)
from drsearch.storage import StudyStore
from drsearch.study import LoadedStudy


def run_local(
    store: StudyStore,
    loaded: LoadedStudy,
    n_trials: int,
    progress: StudyProgress,
    deadline: float | None,
) -> None:
    """Run up to ``n_trials`` trials in this process, stopping at ``deadline``."""
    for _ in range(n_trials):
        if deadline is not None and time.time() >= deadline:
            return
        ctx = start_trial(store, loaded, progress, threads=None)  # one at a time: all cores
        if ctx is not None:
            _run_one(store, loaded, ctx, progress)


def _run_one(
    store: StudyStore, loaded: LoadedStudy, ctx: TrialContext, progress: StudyProgress
) -> None:
    pruning = loaded.config.pruner.enabled

    def emit(payload: dict[str, Any]) -> None:
        record_epoch(store, ctx, payload, progress)
        if payload["epoch"] >= loaded.max_epochs:
            if loaded.max_epochs < ctx.recipe.train.epochs:
                raise PruneSignal  # pruner.max_epochs reached: complete, as Ray's ASHA does
        elif pruning and ctx.trial.should_prune():
            raise PruneSignal

    try:
        final = execute_trial(ctx.recipe, ctx.run_dir, emit, loaded.config.pruner.metric)
        outcome = ctx.tracker.outcome(final, stopped_by_scheduler=False)
    except PruneSignal:
        outcome = ctx.tracker.outcome(None, stopped_by_scheduler=True)
    finish_trial(store, ctx, outcome, progress, {"executor": "local"})
