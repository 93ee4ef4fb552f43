"""The in-process executor: the same claims, decisions and outcomes as Ray, one trial at a time.

For debugging and for machines without Ray. Several local runners may share one study.
"""

from __future__ import annotations

import contextlib
import time

from drsearch.config.study import LoadedStudy
from drsearch.search.deadline import Deadline
from drsearch.search.runners.common import (
    NoTrial,
    StudyProgress,
    TrialContext,
    after_epoch,
    finish_trial,
    start_trial,
)
from drsearch.search.store import StudyStore
from drsearch.search.trial import EpochReport
from drsearch.search.worker import PruneSignal, execute_trial


def run_local(
    store: StudyStore,
    loaded: LoadedStudy,
    progress: StudyProgress,
    deadline: Deadline | None,
) -> None:
    """Run trials in this process until the study's budget is spent or the time limit is
    reached (``deadline``: then the leader of the highest rung is finished)."""
    while True:
        # one at a time (all cores): nothing of this runner's runs when it asks
        ctx = start_trial(store, loaded, progress, threads=None, deadline=deadline)
        if ctx is NoTrial.SPENT:
            return
        if ctx is NoTrial.WAIT:  # another runner's trial may still make a paused one promotable
            time.sleep(1.0)
        elif isinstance(ctx, TrialContext):
            _run_one(store, loaded, ctx, progress)


def _run_one(
    store: StudyStore, loaded: LoadedStudy, ctx: TrialContext, progress: StudyProgress
) -> None:
    def emit(report: EpochReport) -> None:
        if after_epoch(store, ctx, report, progress) != "continue":
            raise PruneSignal

    # on PruneSignal, ctx.decision says why: pruned, paused, or pruner.max_epochs reached
    with contextlib.suppress(PruneSignal):
        ctx.end = execute_trial(
            ctx.recipe, ctx.run_dir, emit, loaded.config.pruner.metric, resume=ctx.resume
        )
    ctx.extra_attrs["executor"] = "local"
    finish_trial(store, ctx, progress)
