"""The Optuna study as the single source of truth: opening it, the budget, and idempotent writes.

Every write can be repeated safely (an intermediate value is overwritten with the same value,
a finished trial is never told twice), and a trial's final state is the last thing written,
so a runner killed at any moment leaves finished trials complete and unfinished ones RUNNING.
A later claim marks those FAIL with reason ``interrupted`` (they do not count toward the
budget) once the runner that owned them is gone.

The budget belongs to the study: ``n_trials`` is stored with it, and a trial is claimed under
a lock that every runner of the study takes (a file lock beside a SQLite database, an
advisory lock in PostgreSQL), so any number of runners together start exactly the budget."""

from __future__ import annotations

import contextlib
import json
import os
import socket
import threading
import time
import uuid
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import optuna
from optuna.storages import RDBStorage
from optuna.trial import FrozenTrial, TrialState

from drsearch.config.study import StudyConfig
from drsearch.search.database import StudyLock, make_storage
from drsearch.search.promotion import PAUSED_ATTR, PAUSED_OUTCOME_ATTR, next_promotion, paused_at
from drsearch.search.samplers import make_pruner, make_sampler
from drsearch.search.trial import Outcome

RUNNER_ATTR = "drsearch:runner"


HEARTBEAT_ATTR = "drsearch:heartbeat"


BUDGET_ATTR = "drsearch:n_trials"


UUID_ATTR = "drsearch:uuid"


#: User attribute of a re-run trial (``--retry-failed``): the number of the failed trial it
#: repeats. The failed trial then no longer counts toward the budget; its re-run does.
RETRY_OF = "retry_of"


INTERRUPTED = "interrupted"


#: A RUNNING trial of a runner on another host is presumed dead after this long without news.
STALE_AFTER_S = 300.0


HEARTBEAT_EVERY_S = 30.0


def process_start(pid: int) -> float | None:
    """When process ``pid`` started (seconds since the epoch), or ``None`` if there is none."""
    import psutil

    try:
        return psutil.Process(pid).create_time()
    except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
        return None


def runner_id() -> str:
    """``host:pid:process start time`` of this process: a reused PID is a different runner."""
    return f"{socket.gethostname()}:{os.getpid()}:{process_start(os.getpid()) or 0:.2f}"


@dataclass
class Counts:
    complete: int
    pruned: int
    failed: int
    interrupted: int
    running: int
    retried: int = 0  # failed trials replaced by a re-run (--retry-failed)
    paused: int = 0  # promotion ASHA: waiting at a rung for a promotion (RUNNING in Optuna)

    @property
    def counted(self) -> int:
        """Trials that used up the budget: complete, pruned, and failed by their own fault."""
        return self.complete + self.pruned + self.failed

    @property
    def claimed(self) -> int:
        """Counted trials plus those running or paused now: what a new claim is checked
        against."""
        return self.counted + self.running + self.paused


def retried_numbers(trials: Sequence[FrozenTrial]) -> set[int]:
    """Failed trials that a re-run (queued or started) replaces."""
    return {int(t.user_attrs[RETRY_OF]) for t in trials if RETRY_OF in t.user_attrs}


def best_trial(study: optuna.Study) -> FrozenTrial | None:
    """The best feasible trial; when none is feasible, the best complete one (the earliest
    of equals); ``None`` before any trial is complete."""
    try:
        return study.best_trial
    except ValueError:  # nothing complete, or (constrained) nothing feasible
        complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
        return max(complete, key=lambda t: _value(t)) if complete else None


def _value(t: FrozenTrial) -> float:
    return float("-inf") if t.value is None else float(t.value)


def count_trials(trials: Sequence[FrozenTrial]) -> Counts:
    tally: Counter[str] = Counter()
    retried = retried_numbers(trials)
    for t in trials:
        if t.state == TrialState.FAIL and t.user_attrs.get("fail_reason") == INTERRUPTED:
            tally["interrupted"] += 1
        elif t.state == TrialState.FAIL and t.number in retried:
            tally["retried"] += 1
        elif paused_at(t) is not None:
            tally["paused"] += 1
        else:
            tally[t.state.name] += 1
    return Counts(
        tally["COMPLETE"],
        tally["PRUNED"],
        tally["FAIL"],
        tally["interrupted"],
        tally["RUNNING"],
        tally["retried"],
        tally["paused"],
    )


class StudyStore:
    """One Optuna study and the writes drsearch makes to it."""

    def __init__(self, config: StudyConfig, storage: RDBStorage | None = None) -> None:
        optuna.logging.set_verbosity(optuna.logging.WARNING)
        self.config = config
        url = config.storage_url()
        self.lock = StudyLock(url, config.name)
        with self.lock.hold():  # concurrent runners would race creating schema and study
            self.storage = storage or make_storage(url)
            self.study = optuna.create_study(
                study_name=config.name,
                storage=self.storage,
                sampler=make_sampler(config),
                pruner=make_pruner(config),
                direction="maximize",
                load_if_exists=True,
            )
            self.uuid = self._identity()
        self.runner = runner_id()
        self.artifacts: Any = None  # an Optuna artifact store, when the runner sets one
        self._active: set[int] = set()
        self._beating: threading.Event | None = None

    def _identity(self) -> str:
        """A uuid stored with the study: its run folders are keyed by it."""
        attrs = self.storage.get_study_system_attrs(self.study._study_id)
        if UUID_ATTR not in attrs:
            self.storage.set_study_system_attr(self.study._study_id, UUID_ATTR, uuid.uuid4().hex)
            attrs = self.storage.get_study_system_attrs(self.study._study_id)
        return str(attrs[UUID_ATTR])

    # -- the budget ------------------------------------------------------------------------
    def budget(self) -> int:
        attrs = self.storage.get_study_system_attrs(self.study._study_id)
        return int(attrs.get(BUDGET_ATTR, self.config.budget.n_trials))

    def set_budget(self, n_trials: int) -> None:
        """The study's budget from now on, for every runner of it."""
        self.storage.set_study_system_attr(self.study._study_id, BUDGET_ATTR, n_trials)

    def claim(self) -> optuna.Trial | None:
        """Start a trial if the study's budget has room, atomically across runners; ``None``
        when it is spent. Trials of runners that are gone are marked interrupted first."""
        with self.lock.hold():
            self._reap()
            if self.counts().claimed >= self.budget():
                return None
            trial = self.study.ask()
            self.storage.set_trial_system_attr(trial._trial_id, RUNNER_ATTR, self.runner)
            self.heartbeat(trial._trial_id)
        self._active.add(trial._trial_id)
        return trial

    # -- promotion ASHA (drsearch.search.promotion) ------------------------------------------
    def pause(self, trial_id: int, epoch: int, outcome: Outcome) -> None:
        """Leave a trial RUNNING at its rung, to be promoted or pruned later (the runner that
        ran it stays recorded; no runner is needed for a paused trial to stay alive);
        ``outcome`` is how it ends if it never is (written then by ``prune_paused``)."""
        self._active.discard(trial_id)
        if self._finished(trial_id):
            return
        attrs = outcome.user_attrs
        kept = {k: attrs[k] for k in ("wall_seconds", "promotions") if k in attrs}
        self.set_user_attrs(trial_id, kept)  # what a promotion carries on
        self.storage.set_trial_system_attr(
            trial_id, PAUSED_OUTCOME_ATTR, json.dumps(asdict(outcome))
        )
        self.storage.set_trial_system_attr(trial_id, PAUSED_ATTR, epoch)

    def promote(self) -> FrozenTrial | None:
        """Take the paused trial that ``next_promotion`` names for this runner, atomically
        across runners (as it was read under the lock: its parameters and attributes);
        ``None`` when none qualifies."""
        with self.lock.hold():
            chosen = next_promotion(self.study.get_trials(deepcopy=False), self._eta)
            if chosen is None:
                return None
            trial_id = chosen._trial_id
            self.storage.set_trial_system_attr(trial_id, RUNNER_ATTR, self.runner)
            self.storage.set_trial_system_attr(trial_id, PAUSED_ATTR, None)
            self.heartbeat(trial_id)
        self._active.add(trial_id)
        return chosen

    @property
    def _eta(self) -> int:
        return self.config.pruner.reduction_factor

    def prune_paused(self, wait: bool = True) -> list[tuple[int, Outcome]] | None:
        """When nothing runs (no trial is left to grow a rung), prune every paused trial with
        the outcome it paused with; their numbers and outcomes. ``None`` while a trial still
        runs (it may make a paused one promotable: wait). Without ``wait`` (the study left
        promotion ASHA: nothing will resume them) they are pruned at once."""
        with self.lock.hold():
            self._reap()
            trials = self.study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
            if wait and any(paused_at(t) is None for t in trials):
                return None
            pruned = []
            for t in trials:
                if paused_at(t) is None:
                    continue
                outcome = Outcome(**json.loads(t.system_attrs[PAUSED_OUTCOME_ATTR]))
                self.finish(t._trial_id, outcome, {})
                pruned.append((t.number, outcome))
        return pruned

    # -- trials --------------------------------------------------------------------------
    def heartbeat(self, trial_id: int) -> None:
        self.storage.set_trial_system_attr(trial_id, HEARTBEAT_ATTR, time.time())

    def start_heartbeat(self) -> None:
        """Beat for this runner's running trials every ``HEARTBEAT_EVERY_S`` (other hosts
        judge a runner by it; on this host the process itself is checked)."""
        if self._beating is not None:
            return
        stop = self._beating = threading.Event()

        def beat() -> None:
            while not stop.wait(HEARTBEAT_EVERY_S):
                for trial_id in list(self._active):
                    with contextlib.suppress(Exception):  # the next beat will try again
                        self.heartbeat(trial_id)

        threading.Thread(target=beat, name="drsearch-heartbeat", daemon=True).start()

    def stop_heartbeat(self) -> None:
        if self._beating is not None:
            self._beating.set()
            self._beating = None

    def record_epoch(self, trial_id: int, step: int, value: float) -> None:
        if self._finished(trial_id):
            return
        self.storage.set_trial_intermediate_value(trial_id, step, value)

    def should_prune(self, trial_id: int) -> bool:
        """The pruner's decision on the trial's stored curve (it records its rungs there)."""
        return self.study.pruner.prune(self.study, self.storage.get_trial(trial_id))

    def set_user_attrs(self, trial_id: int, attrs: dict[str, Any]) -> None:
        if self._finished(trial_id):
            return
        for key, value in attrs.items():
            self.storage.set_trial_user_attr(trial_id, key, value)

    def finish(self, trial_id: int, outcome: Outcome, intermediate: dict[int, float]) -> None:
        """Write everything about a finished trial, its state last; repeatable."""
        self._active.discard(trial_id)
        if self._finished(trial_id):
            return
        for step, value in sorted(intermediate.items()):
            self.storage.set_trial_intermediate_value(trial_id, step, value)
        self.set_user_attrs(trial_id, outcome.user_attrs)
        if outcome.constraints:
            for name, value in outcome.constraints.items():
                self.storage.set_trial_system_attr(trial_id, f"constraints:{name}", value)
            # optuna-dashboard 0.21 reads only the legacy list form
            self.storage.set_trial_system_attr(
                trial_id, "constraints", list(outcome.constraints.values())
            )
        number = self.storage.get_trial_number_from_id(trial_id)
        state = TrialState[outcome.state]
        values = [outcome.value] if state == TrialState.COMPLETE else None
        self.study.tell(number, values, state=state, skip_if_finished=True)

    def _finished(self, trial_id: int) -> bool:
        return self.storage.get_trial(trial_id).state.is_finished()

    def is_finished(self, trial_id: int) -> bool:
        return self._finished(trial_id)

    # -- re-running failed trials ----------------------------------------------------------
    def enqueue_retries(self) -> list[tuple[int, int]]:
        """Queue every failed or interrupted trial again with its parameters; the old trial
        stops counting. Returns ``(old number, queue position)`` pairs."""
        queued = []
        with self.lock.hold():
            self._reap()
            trials = self.study.get_trials(deepcopy=False)
            retried = retried_numbers(trials)
            for t in trials:
                if t.state != TrialState.FAIL or t.number in retried or not t.params:
                    continue
                self.study.enqueue_trial(t.params, user_attrs={RETRY_OF: t.number})
                queued.append((t.number, len(queued)))
        return queued

    def interrupt_own(self) -> list[int]:
        """Mark this runner's running trials FAIL (``interrupted``) now, as a later run would
        (on Ctrl-C); their numbers."""
        stopped = []
        for trial_id in sorted(self._active):
            if self._finished(trial_id):
                continue
            self.storage.set_trial_user_attr(trial_id, "fail_reason", INTERRUPTED)
            self.storage.set_trial_state_values(trial_id, TrialState.FAIL)
            stopped.append(self.storage.get_trial_number_from_id(trial_id))
        self._active.clear()
        return stopped

    # -- bookkeeping -----------------------------------------------------------------------
    def reap_interrupted(self) -> list[int]:
        """Mark RUNNING trials whose runner is gone as FAIL (``interrupted``); their numbers."""
        with self.lock.hold():
            return self._reap()

    def _reap(self) -> list[int]:
        reaped = []
        for trial in self.study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
            if paused_at(trial) is not None or runner_alive(trial.system_attrs, self.runner):
                continue  # a paused trial waits for a promotion, with no runner
            self.storage.set_trial_user_attr(trial._trial_id, "fail_reason", INTERRUPTED)
            self.storage.set_trial_state_values(trial._trial_id, TrialState.FAIL)
            reaped.append(trial.number)
        return reaped

    def counts(self) -> Counts:
        return count_trials(self.study.get_trials(deepcopy=False))


def runner_alive(system_attrs: dict[str, Any], me: str) -> bool:
    """Whether the runner that owns a RUNNING trial still runs: on this host, its PID with the
    same process start time; elsewhere, a heartbeat within ``STALE_AFTER_S``."""
    owner = str(system_attrs.get(RUNNER_ATTR, ""))
    if owner == me:
        return True
    host, _, rest = owner.partition(":")
    pid, _, start = rest.partition(":")
    if host == socket.gethostname() and pid.isdigit():
        started = process_start(int(pid))
        try:
            return started is not None and abs(started - float(start)) < 1.0
        except ValueError:
            return False
    beat = system_attrs.get(HEARTBEAT_ATTR)
    return beat is not None and time.time() - float(beat) < STALE_AFTER_S
