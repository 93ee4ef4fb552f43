"""The simulated executor: W workers on a simulated clock, driving the study's real code.

Benchmarks of a search (``bench/``) need thousands of trials; training them is out of the
question, and a copy of the search logic would benchmark the copy. Here a *trainable* (a
surrogate such as YAHPO's LCBench, or a table of curves) stands in for the DR trainer behind
the same seam: it is called as ``trainable(config, reporter, done)`` and calls
``reporter(epoch, record)`` once per epoch with a trainer-shaped record (``val`` metrics,
``best_epoch``, ``epoch_seconds``...); raising ``StopTraining`` from the reporter ends it. Each
epoch costs the record's ``epoch_seconds`` of *simulated* time, not wall time.

Every decision is the runners' own: each worker claims or promotes through ``start_trial``,
each epoch goes through ``after_epoch`` (the rung scheduler, the pruner, ``max_epochs``) and
each end through ``finish_trial`` (the trial tracker, the store), on a real study. Events are
taken in simulated-time order (ties: the lower worker first), as Syne Tune's simulator back-end
does: a worker thread waits, before each claim and each epoch, until it is the earliest one
due; only one thread acts at a time, so W workers interleave exactly as W machines would and
every run of the same inputs is the same.

A promoted trial (promotion ASHA) is resumed with ``done`` = the epochs its curve already has:
the trainable replays them (``record["replayed"] = True``, no cost) and goes on.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from drsearch.config.study import LoadedStudy, StudyConfig
from drsearch.search.runners.common import (
    Configure,
    NoTrial,
    SilentProgress,
    StudyProgress,
    TrialContext,
    after_epoch,
    finish_trial,
    start_trial,
)
from drsearch.search.store import StudyStore
from drsearch.search.trial import Outcome, TrialEnd
from drsearch.search.worker import epoch_report
from drsearch.train.seam import Reporter, StopTraining

#: ``trainable(config, reporter, done)``: train ``config``, reporting every epoch (the first
#: ``done`` of them replayed, at no cost).
Trainable = Callable[[Any, Reporter, int], None]

#: Simulated seconds a worker with nothing to start waits before asking the study again
#: (promotion ASHA: a running trial may still make a paused one promotable).
WAIT_TICK = 1.0


@dataclass
class SimEvent:
    """One decision the search made, at a simulated time."""

    time: float
    worker: int
    trial: int
    epoch: int
    decision: str  # start, resume, continue, stop, prune, pause, complete, fail


@dataclass
class SimulationResult:
    """What a simulated run did: its events in time order, and the simulated time of the
    last one (a worker waiting with nothing to do is not work)."""

    events: list[SimEvent] = field(default_factory=list)
    elapsed: float = 0.0


class _Clock:
    """Simulated time shared by the worker threads: a worker's ``wait`` returns when its due
    time is the earliest of all live workers' (every live worker has to be waiting first, so
    nothing can still happen before it)."""

    def __init__(self, workers: int) -> None:
        self.cv = threading.Condition()
        self.local = [0.0] * workers
        self.due: dict[int, float] = {}
        self.live = set(range(workers))
        self.now = 0.0
        self.error: BaseException | None = None

    def wait(self, worker: int, seconds: float) -> float:
        """Spend ``seconds`` of the worker's simulated time; returns the time then."""
        with self.cv:
            self.due[worker] = self.local[worker] + max(0.0, seconds)
            self.cv.notify_all()
            while True:
                if self.error is not None:
                    raise RuntimeError("another simulated worker failed") from self.error
                if len(self.due) == len(self.live):
                    first = min(self.due, key=lambda w: (self.due[w], w))
                    if first == worker:
                        break
                self.cv.wait()
            self.now = self.local[worker] = self.due.pop(worker)
            self.cv.notify_all()
            return self.now

    def leave(self, worker: int, error: BaseException | None = None) -> None:
        with self.cv:
            self.live.discard(worker)
            self.due.pop(worker, None)
            if error is not None and self.error is None:
                self.error = error
            self.cv.notify_all()


def memory_store(config: StudyConfig) -> StudyStore:
    """The study in memory (Optuna's ``InMemoryStorage``): the same store code, for a
    benchmark's thousands of trials (about 50x faster than SQLite; one process only)."""
    import optuna

    in_memory = config.model_copy(update={"storage": "sqlite:///:memory:"})  # lock: a no-op
    return StudyStore(in_memory, optuna.storages.InMemoryStorage())  # type: ignore[arg-type]


def run_simulated(
    store: StudyStore,
    loaded: LoadedStudy,
    trainable: Trainable,
    configure: Configure,
    workers: int = 1,
    progress: StudyProgress | None = None,
    until: float | None = None,
) -> SimulationResult:
    """Run the study's budget on ``workers`` simulated workers; the events and the simulated
    time it took (``elapsed``: when the last worker finished). With ``until``, the run ends
    at that simulated time (a benchmark's time budget): an epoch that would end later is not
    reported, and the trials then running are left as they are."""
    progress = progress or SilentProgress()
    clock = _Clock(workers)
    result = SimulationResult()
    driver = threading.Lock()  # the driver's calls, one at a time (as one process makes them)
    metric = loaded.config.pruner.metric

    def log(worker: int, number: int, epoch: int, decision: str) -> None:
        result.events.append(SimEvent(clock.local[worker], worker, number, epoch, decision))

    def work(worker: int) -> None:
        while True:
            if clock.wait(worker, 0.0) >= (until if until is not None else float("inf")):
                return  # its turn (claims happen in simulated-time order too), or time is up
            ended = _Ended(progress)  # trials start_trial ends (paused ones pruned at the end)
            with driver:
                ctx = start_trial(store, loaded, ended, None, configure)
            for number, outcome in ended.finished:
                epoch = int(outcome.user_attrs.get("pruned_at_epoch") or 0)
                log(worker, number, epoch, str(outcome.state).lower().replace("pruned", "prune"))
            if ctx is NoTrial.SPENT:
                return
            if not isinstance(ctx, TrialContext):  # WAIT, or a trial that could not start
                if ctx is NoTrial.WAIT:
                    clock.wait(worker, WAIT_TICK)
                continue
            done = max(ctx.trial.storage.get_trial(ctx.trial_id).intermediate_values, default=0)
            log(worker, ctx.number, done if ctx.resume else 0, "resume" if ctx.resume else "start")

            def reporter(epoch: int, record: dict[str, Any], ctx: TrialContext = ctx) -> None:
                report = epoch_report(record, metric)
                if not report.replayed:
                    if until is not None and clock.local[worker] + report.epoch_seconds > until:
                        raise _OutOfTime
                    clock.wait(worker, report.epoch_seconds)
                with driver:
                    decision = after_epoch(store, ctx, report, progress)
                if not report.replayed:
                    log(worker, ctx.number, epoch, decision)
                if decision != "continue":
                    raise StopTraining

            try:
                trainable(ctx.recipe, reporter, done if ctx.resume else 0)
                ctx.end = TrialEnd("finished")
            except StopTraining:
                pass
            except _OutOfTime:
                return  # the time budget ends inside this trial's next epoch
            except Exception as exc:  # noqa: BLE001 - the trainable's failure is the trial's
                ctx.end = TrialEnd("failed", f"{type(exc).__name__}: {exc}")
            ctx.extra_attrs["executor"] = "simulated"
            with driver:
                outcome = finish_trial(store, ctx, progress)
            if outcome is not None and outcome.state != "PRUNED":  # pruned: said at its epoch
                last = ctx.tracker.last
                how = "complete" if outcome.state == "COMPLETE" else "fail"
                log(worker, ctx.number, last.epoch if last else 0, how)

    def thread(worker: int) -> None:
        try:
            work(worker)
        except BaseException as exc:  # noqa: BLE001 - raised in the caller's thread below
            clock.leave(worker, exc)
        else:
            clock.leave(worker)

    threads = [threading.Thread(target=thread, args=(w,), daemon=True) for w in range(workers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if clock.error is not None:
        raise clock.error
    result.events.sort(key=lambda e: (e.time, e.worker))
    result.elapsed = max((e.time for e in result.events), default=0.0)
    return result


class _OutOfTime(BaseException):  # noqa: N818 - a signal; passes the trainable's handlers
    """The time budget ends before this epoch would."""


class _Ended:
    """A progress display that also keeps the trials ended inside ``start_trial``."""

    def __init__(self, inner: StudyProgress) -> None:
        self.inner = inner
        self.finished: list[tuple[int, Outcome]] = []

    def trial_started(self, number: int, params: dict[str, Any]) -> None:
        self.inner.trial_started(number, params)

    def trial_epoch(self, number: int, epoch: int, value: float) -> None:
        self.inner.trial_epoch(number, epoch, value)

    def trial_finished(self, number: int, outcome: Outcome) -> None:
        self.finished.append((number, outcome))
        self.inner.trial_finished(number, outcome)

    def trial_paused(self, number: int, epoch: int) -> None:
        self.inner.trial_paused(number, epoch)

    def warn(self, message: str) -> None:
        self.inner.warn(message)
