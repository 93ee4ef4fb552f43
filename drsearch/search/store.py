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

import math
import uuid
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import optuna
from optuna.storages import RDBStorage
from optuna.trial import FrozenTrial, TrialState

from drsearch.config.study import StudyConfig
from drsearch.search.database import StudyLock, make_storage
from drsearch.search.liveness import (
    RUNNER_ATTR,
    Heartbeat,
    close_runner,
    db_now,
    open_runner,
    runner_alive,
)
from drsearch.search.samplers import make_pruner, make_sampler
from drsearch.search.scheduler import PAUSED_ATTR, paused_at
from drsearch.search.trial import RANKED_ATTR, Outcome
from drsearch.states import (
    INTERRUPTED,
    RETRY_OF,
    Status,
    is_interrupted,
    retried_numbers,
    status,
)

BUDGET_ATTR = "drsearch:n_trials"


UUID_ATTR = "drsearch:uuid"
#: The samplers a study's trials drew from, in order (``StudyStore.note_sampler``).
SAMPLERS_ATTR = "drsearch:samplers"


#: How often one configuration is queued again after an interruption (a killed runner, Ctrl-C)
#: before it is left to ``--retry-failed``: a configuration that takes its runner down with it
#: (out of memory, say) must not go round in circles.
MAX_INTERRUPTIONS = 3

#: The user attributes that say what a queued trial is (a finalist's fold or seed, where a
#: configuration came from); a configuration queued again after an interruption keeps them.
QUEUE_ATTRS = ("confirm_of", "fold", "seed", "select_epoch", "queued_from")


STORED, ALREADY, RECOVERED = "stored", "already finished", "recovered"


@dataclass(frozen=True)
class Finished:
    """What ``StudyStore.finish`` did: ``stored`` (as trial ``number``), ``already
    finished`` (told before: nothing written), or ``recovered`` (the trial had been marked
    interrupted while it trained: its result is stored as the new trial ``number``)."""

    how: str
    number: int | None = None


#: System attribute: the names of a trial's constraint values, in the order of Optuna's list.
CONSTRAINT_NAMES_ATTR = "drsearch:constraint_names"


def _constraint_attrs(outcome: Outcome) -> dict[str, Any]:
    """Optuna's constraint values as system attributes, each value once: the list form (what
    optuna-dashboard 0.21 reads, and Optuna as ``"0"``, ``"1"``, ...), with the names beside
    it under a key Optuna does not read. Storing the named form as well would make every
    constraint count twice for a sampler (GPSampler fits one model per value; TPE sums the
    violations)."""
    if not outcome.constraints:
        return {}
    return {
        "constraints": list(outcome.constraints.values()),
        CONSTRAINT_NAMES_ATTR: list(outcome.constraints),
    }


def named_constraints(trial: Any) -> dict[str, float]:
    """A stored trial's constraint values by name (``_constraint_attrs``)."""
    values = trial.system_attrs.get("constraints") or []
    names = trial.system_attrs.get(CONSTRAINT_NAMES_ATTR) or [str(i) for i in range(len(values))]
    return dict(zip(names, values, strict=False))


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


@dataclass
class Requeued:
    """What ``StudyStore.requeue_locked`` did: the interrupted trials whose configurations it
    queued again, and those it left (interrupted ``MAX_INTERRUPTIONS`` times in a row)."""

    queued: list[int] = field(default_factory=list)
    given_up: list[int] = field(default_factory=list)


def interruptions(t: FrozenTrial, by_number: dict[int, FrozenTrial]) -> int:
    """How many times in a row ``t``'s configuration was interrupted (``t`` and the trials it
    re-runs, back to one that was not)."""
    n, seen = 0, set()
    while t is not None and is_interrupted(t) and t.number not in seen:
        n += 1
        seen.add(t.number)
        parent = t.user_attrs.get(RETRY_OF)
        t = by_number.get(int(parent)) if parent is not None else None
    return n


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
    retried = retried_numbers(trials)
    tally = Counter(status(t, retried) for t in trials)
    return Counts(
        tally[Status.COMPLETE],
        tally[Status.PRUNED],
        tally[Status.FAILED],
        tally[Status.INTERRUPTED],
        tally[Status.RUNNING],
        tally[Status.RETRIED],
        tally[Status.PAUSED],
    )


class StudyStore:
    """One Optuna study and the writes drsearch makes to it."""

    def __init__(
        self, config: StudyConfig, storage: RDBStorage | None = None, queue_only: bool = False
    ) -> None:
        optuna.logging.set_verbosity(optuna.logging.WARNING)
        self.config = config
        #: a study whose trials are all queued by a plan (a finalist stage): never sampled
        self.queue_only = queue_only
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
        self.runner = open_runner()
        self.artifacts: Any = None  # an Optuna artifact store, when the runner sets one
        #: called with each trial and its outcome just before it is told (every ended trial,
        #: pruned-at-a-rung ones included): the dashboard note and artifacts; returns a
        #: problem to record, never raises
        self.before_tell: Callable[[optuna.Trial, Outcome], str | None] | None = None
        self._active: set[int] = set()
        #: promoted trials this runner holds: the rung each was paused at
        self._promoted: dict[int, int] = {}
        self._heart = Heartbeat(self.storage, lambda: self._active)

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

    def budget_claimed(self) -> bool:
        """Whether every trial of the budget has been claimed (finished, running or paused)."""
        return self.counts().claimed >= self.budget()

    def set_budget(self, n_trials: int) -> None:
        """The study's budget from now on, for every runner of it."""
        self.storage.set_study_system_attr(self.study._study_id, BUDGET_ATTR, n_trials)

    # -- the samplers it ran under ---------------------------------------------------------
    def note_sampler(self) -> str | None:
        """Add this run's sampler to the study's record of the samplers its trials drew from
        (``SAMPLERS_ATTR``, in order; the methods paragraph names them); a warning when it is
        not the one the earlier trials drew from (a sampler changed, or a default: the
        sampler is not part of the study's definition). Under the study lock."""
        mine = self.config.sampler.label()
        attrs = self.storage.get_study_system_attrs(self.study._study_id)
        used = list(attrs.get(SAMPLERS_ATTR, []))
        if used and used[-1] == mine:
            return None
        self.storage.set_study_system_attr(self.study._study_id, SAMPLERS_ATTR, [*used, mine])
        if used:
            return f"the next trials draw from the {mine} sampler; the earlier ones from {used[-1]}"
        if self.study.get_trials(deepcopy=False):
            return (
                f"the next trials draw from the {mine} sampler; the earlier trials' sampler is "
                "not recorded (a study begun before samplers were; the default was random)"
            )
        return None

    # -- the trials this runner holds -------------------------------------------------------
    def hold(self, trial_id: int, promoted_from: int | None = None) -> None:
        """This runner now runs the trial (claimed, or promoted from the rung
        ``promoted_from``): its name and a heartbeat on it. Under the study lock."""
        self.storage.set_trial_system_attr(trial_id, RUNNER_ATTR, str(self.runner))
        self.heartbeat(trial_id)
        self._active.add(trial_id)
        if promoted_from is not None:
            self._promoted[trial_id] = promoted_from

    def let_go(self, trial_id: int) -> None:
        """This runner no longer runs the trial (finished, or paused at a rung)."""
        self._active.discard(trial_id)
        self._promoted.pop(trial_id, None)

    def claim(self) -> optuna.Trial | None:
        """Start a trial if the study's budget has room, atomically across runners; ``None``
        when it is spent. Trials of runners that are gone are marked interrupted first, and
        every interrupted configuration is queued again (``requeue_locked``): a queued trial
        is taken before anything is sampled. A queue-only study (a finalist stage: its plan is
        the only source of its trials) never samples: ``None`` when its queue is empty."""
        with self.lock.hold():
            self.reap_locked()
            self.requeue_locked()
            if self.budget_claimed():
                return None
            if self.queue_only and not self.study.get_trials(
                deepcopy=False, states=(TrialState.WAITING,)
            ):
                return None
            trial = self.study.ask()
            self.hold(trial._trial_id)
        return trial

    # -- trials --------------------------------------------------------------------------
    def heartbeat(self, trial_id: int) -> None:
        self._heart.beat(trial_id)

    def start_heartbeat(self) -> None:
        """Beat for this runner's running trials (on the database's clock) until stopped."""
        self._heart.start()

    def stop_heartbeat(self) -> None:
        self._heart.stop()

    def record_epoch(
        self, trial_id: int, step: int, value: float, ranked: float | None = None
    ) -> None:
        """The pruning value after epoch ``step`` (Optuna's intermediate value) and the
        objective the trial would have stopping there (``RANKED_ATTR``), written first so that
        a sampler never sees the epoch without it."""
        if self.is_finished(trial_id):
            return
        if ranked is not None and math.isfinite(ranked):
            self.storage.set_trial_system_attr(trial_id, f"{RANKED_ATTR}{step}", ranked)
        self.storage.set_trial_intermediate_value(trial_id, step, value)

    def set_user_attrs(self, trial_id: int, attrs: dict[str, Any]) -> None:
        if self.is_finished(trial_id):
            return
        for key, value in attrs.items():
            self.storage.set_trial_user_attr(trial_id, key, value)

    def finish(self, trial_id: int, outcome: Outcome, intermediate: dict[int, float]) -> Finished:
        """Write everything about a finished trial, its state last; repeatable.

        A trial marked interrupted while it still trained (its runner seemed gone: a lapsed
        heartbeat, a paused process) is not told twice: its result is stored as a new trial
        (``RECOVERED``, ``recovered_from`` naming the interrupted one), never dropped.

        This runner holds the trial until its state is written: Ctrl-C in the middle of these
        writes still finds it (``interrupt_own``) and lets it go as interrupted."""
        frozen = self.storage.get_trial(trial_id)
        if frozen.state.is_finished():
            self.let_go(trial_id)
            late = (
                frozen.state == TrialState.FAIL
                and frozen.user_attrs.get("fail_reason") == INTERRUPTED
                and outcome.state in ("COMPLETE", "PRUNED")
            )
            return self._recover(frozen, outcome, intermediate) if late else Finished(ALREADY)
        for step, value in sorted(intermediate.items()):
            self.storage.set_trial_intermediate_value(trial_id, step, value)
        if self.before_tell is not None:
            problem = self.before_tell(optuna.Trial(self.study, trial_id), outcome)
            if problem:
                outcome.user_attrs["artifact_error"] = problem
        self.set_user_attrs(trial_id, outcome.user_attrs)
        for key, value in _constraint_attrs(outcome).items():
            self.storage.set_trial_system_attr(trial_id, key, value)
        state = TrialState[outcome.state]
        values = [outcome.value] if state == TrialState.COMPLETE else None
        self.study.tell(frozen.number, values, state=state, skip_if_finished=True)
        self.let_go(trial_id)
        return Finished(STORED, frozen.number)

    def _recover(
        self, old: FrozenTrial, outcome: Outcome, intermediate: dict[int, float]
    ) -> Finished:
        state = TrialState[outcome.state]
        with self.lock.hold():
            for t in self.study.get_trials(deepcopy=False):
                if t.user_attrs.get("recovered_from") == old.number:  # stored before
                    return Finished(ALREADY, t.number)
            trial = optuna.trial.create_trial(
                state=state,
                value=outcome.value if state == TrialState.COMPLETE else None,
                params=old.params,
                distributions=old.distributions,
                user_attrs={
                    k: v
                    for k, v in {**old.user_attrs, **outcome.user_attrs}.items()
                    if k not in ("fail_reason", "interrupted_by")
                }
                | {"recovered_from": old.number},
                system_attrs={
                    RUNNER_ATTR: str(self.runner),
                    **_constraint_attrs(outcome),
                    **{k: v for k, v in old.system_attrs.items() if k.startswith(RANKED_ATTR)},
                },
                intermediate_values={**old.intermediate_values, **intermediate},
            )
            self.study.add_trial(trial)  # a finished trial takes no attribute: the new one
            number = self.study.get_trials(deepcopy=False)[-1].number  # names the old
        return Finished(RECOVERED, number)

    def is_finished(self, trial_id: int) -> bool:
        return self.storage.get_trial(trial_id).state.is_finished()

    # -- re-running failed trials ----------------------------------------------------------
    def requeue_locked(self) -> Requeued:
        """Queue every interrupted trial's configuration again (Ctrl-C, a runner killed or
        lost), once, with the user attributes that say what it is (a finalist's fold or seed)
        and ``retry_of`` naming it: its re-run resumes from its checkpoint where an epoch
        finished under the same recipe, else starts afresh; the interrupted trial never
        counted. A trial with no parameters yet (interrupted before it drew them) is replaced
        by a new draw instead; a configuration interrupted ``MAX_INTERRUPTIONS`` times in a row
        is left to ``--retry-failed``. For a caller that holds the study lock."""
        trials = self.study.get_trials(deepcopy=False)
        by_number = {t.number: t for t in trials}
        replaced = retried_numbers(trials)
        done = Requeued()
        for t in trials:
            if not is_interrupted(t) or t.number in replaced:
                continue
            params = dict(t.params) or dict(t.system_attrs.get("fixed_params") or {})
            if not params:
                continue
            if interruptions(t, by_number) >= MAX_INTERRUPTIONS:
                done.given_up.append(t.number)
                continue
            attrs = {k: t.user_attrs[k] for k in QUEUE_ATTRS if k in t.user_attrs}
            self.study.enqueue_trial(params, user_attrs=attrs | {RETRY_OF: t.number})
            done.queued.append(t.number)
        return done

    def enqueue_retries(self) -> list[tuple[int, int]]:
        """Queue every failed or interrupted trial again with its parameters; the old trial
        stops counting. Returns ``(old number, queue position)`` pairs."""
        queued = []
        with self.lock.hold():
            self.reap_locked()
            trials = self.study.get_trials(deepcopy=False)
            retried = retried_numbers(trials)
            for t in trials:
                if t.state != TrialState.FAIL or t.number in retried or not t.params:
                    continue
                self.study.enqueue_trial(t.params, user_attrs={RETRY_OF: t.number})
                queued.append((t.number, len(queued)))
        return queued

    def interrupt_own(self, cause: str | None = None) -> list[int]:
        """Let go of this runner's trials now, as a later run would (Ctrl-C, an error): a
        promoted trial returns to the rung it was paused at (its checkpoint keeps what it
        trained since; the next promotion resumes from there), any other is marked FAIL
        ``interrupted`` (not counted; its configuration runs again), with ``cause`` when the
        runner stopped on an error. A trial whose end or pause was already written when the
        interruption came is left as it is. Their numbers."""
        stopped = []
        for trial_id in sorted(self._active):
            frozen = self.storage.get_trial(trial_id)
            if frozen.state.is_finished() or paused_at(frozen) is not None:
                continue
            rung = self._promoted.get(trial_id)
            if rung is not None:
                self.storage.set_trial_system_attr(trial_id, PAUSED_ATTR, rung)
            else:
                self.storage.set_trial_user_attr(trial_id, "fail_reason", INTERRUPTED)
                if cause:
                    self.storage.set_trial_user_attr(trial_id, "interrupted_by", cause)
                self.storage.set_trial_state_values(trial_id, TrialState.FAIL)
            stopped.append(self.storage.get_trial_number_from_id(trial_id))
        self._active.clear()
        self._promoted.clear()
        return stopped

    def close(self) -> None:
        """This runner is done: its heartbeat stops, and a later store of this process reaps
        whatever it still held (``release`` first lets go of them at once)."""
        self.stop_heartbeat()
        close_runner(self.runner)

    # -- bookkeeping -----------------------------------------------------------------------
    def reap_interrupted(self) -> list[int]:
        """Mark RUNNING trials whose runner is gone as FAIL (``interrupted``); their numbers."""
        with self.lock.hold():
            return self.reap_locked()

    def reap_locked(self) -> list[int]:
        """``reap_interrupted`` for a caller that holds the study lock."""
        reaped = []
        running = self.study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
        now = db_now(self.storage) if running else 0.0
        for trial in running:
            if paused_at(trial) is not None:
                continue  # a paused trial waits for a promotion, with no runner
            owner = str(trial.system_attrs.get(RUNNER_ATTR, ""))
            if runner_alive(owner, self.runner, self._heart.age(trial.system_attrs, now)):
                continue
            self.storage.set_trial_user_attr(trial._trial_id, "fail_reason", INTERRUPTED)
            self.storage.set_trial_state_values(trial._trial_id, TrialState.FAIL)
            reaped.append(trial.number)
        return reaped

    def counts(self) -> Counts:
        return count_trials(self.study.get_trials(deepcopy=False))
