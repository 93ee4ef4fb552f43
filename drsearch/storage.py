"""The Optuna study as the single source of truth: opening it, and idempotent writes to it.

Every write can be repeated safely (an intermediate value is overwritten with the same value,
a finished trial is never told twice), and a trial's final state is the last thing written,
so a runner killed at any moment leaves finished trials complete and unfinished ones RUNNING.
A later run marks those FAIL with reason ``interrupted`` (they do not count toward the
budget) when the runner that owned them is gone.
"""

from __future__ import annotations

import os
import socket
import time
import warnings
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
from optuna.storages import RDBStorage
from optuna.trial import TrialState

from drsearch.config.study import StudyConfig
from drsearch.objective import Outcome

RUNNER_ATTR = "drsearch:runner"
HEARTBEAT_ATTR = "drsearch:heartbeat"
INTERRUPTED = "interrupted"
#: A RUNNING trial of a runner on another host is presumed dead after this long without news.
STALE_AFTER_S = 900.0


def runner_id() -> str:
    """``host:pid:start`` of this process, stored on each trial it runs."""
    return f"{socket.gethostname()}:{os.getpid()}:{int(time.time())}"


def masked_url(url: str) -> str:
    """The storage URL with any password hidden, for messages and records."""
    from sqlalchemy.engine import make_url

    return make_url(url).render_as_string(hide_password=True)


def make_storage(url: str) -> RDBStorage:
    """An ``RDBStorage``; SQLite waits for locks instead of failing at once."""
    from sqlalchemy.engine import make_url

    kwargs: dict[str, Any] = {}
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        kwargs = {"connect_args": {"timeout": 60}}
        if parsed.database and parsed.database != ":memory:":
            Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
    return RDBStorage(url, engine_kwargs=kwargs)


def make_sampler(config: StudyConfig) -> optuna.samplers.BaseSampler:
    s = config.sampler
    if s.name == "random":
        return optuna.samplers.RandomSampler(seed=s.seed)
    if s.name == "gp":
        return optuna.samplers.GPSampler(seed=s.seed, n_startup_trials=s.n_startup_trials)
    if s.name == "cmaes":
        return optuna.samplers.CmaEsSampler(
            seed=s.seed, n_startup_trials=s.n_startup_trials, warn_independent_sampling=False
        )
    with warnings.catch_warnings():  # multivariate/group are "experimental" since 2.2
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        return optuna.samplers.TPESampler(
            seed=s.seed, n_startup_trials=s.n_startup_trials, multivariate=True, group=True
        )


def make_pruner(config: StudyConfig) -> optuna.pruners.BasePruner:
    """Optuna's ASHA for the in-process executor (Ray uses its own ASHAScheduler)."""
    p = config.pruner
    if not p.enabled:
        return optuna.pruners.NopPruner()
    return optuna.pruners.SuccessiveHalvingPruner(
        min_resource=p.grace_period,
        reduction_factor=p.reduction_factor,
        min_early_stopping_rate=0,
    )


@dataclass
class Counts:
    complete: int
    pruned: int
    failed: int
    interrupted: int
    running: int

    @property
    def counted(self) -> int:
        """Trials that use up the budget: complete, pruned, and failed by their own fault."""
        return self.complete + self.pruned + self.failed


class StudyStore:
    """One Optuna study and the writes drsearch makes to it."""

    def __init__(self, config: StudyConfig, storage: RDBStorage | None = None) -> None:
        optuna.logging.set_verbosity(optuna.logging.WARNING)
        self.config = config
        self.storage = storage or make_storage(config.storage_url())
        self.study = optuna.create_study(
            study_name=config.name,
            storage=self.storage,
            sampler=make_sampler(config),
            pruner=make_pruner(config),
            direction="maximize",
            load_if_exists=True,
        )
        self.runner = runner_id()
        self.artifacts: Any = None  # an Optuna artifact store, when the runner sets one

    # -- trials --------------------------------------------------------------------------
    def ask(self) -> optuna.Trial:
        trial = self.study.ask()
        self.storage.set_trial_system_attr(trial._trial_id, RUNNER_ATTR, self.runner)
        self.heartbeat(trial._trial_id)
        return trial

    def heartbeat(self, trial_id: int) -> None:
        self.storage.set_trial_system_attr(trial_id, HEARTBEAT_ATTR, time.time())

    def record_epoch(self, trial_id: int, step: int, value: float) -> None:
        if self._finished(trial_id):
            return
        self.storage.set_trial_intermediate_value(trial_id, step, value)
        self.heartbeat(trial_id)

    def set_user_attrs(self, trial_id: int, attrs: dict[str, Any]) -> None:
        if self._finished(trial_id):
            return
        for key, value in attrs.items():
            self.storage.set_trial_user_attr(trial_id, key, value)

    def finish(self, trial_id: int, outcome: Outcome, intermediate: dict[int, float]) -> None:
        """Write everything about a finished trial, its state last; repeatable."""
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

    # -- bookkeeping -----------------------------------------------------------------------
    def reap_interrupted(self) -> list[int]:
        """Mark RUNNING trials whose runner is gone as FAIL (``interrupted``); their numbers."""
        reaped = []
        for trial in self.study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
            if _runner_alive(trial.system_attrs):
                continue
            self.storage.set_trial_user_attr(trial._trial_id, "fail_reason", INTERRUPTED)
            self.storage.set_trial_state_values(trial._trial_id, TrialState.FAIL)
            reaped.append(trial.number)
        return reaped

    def counts(self) -> Counts:
        tally: Counter[str] = Counter()
        for t in self.study.get_trials(deepcopy=False):
            if t.state == TrialState.FAIL and t.user_attrs.get("fail_reason") == INTERRUPTED:
                tally["interrupted"] += 1
            else:
                tally[t.state.name] += 1
        return Counts(
            tally["COMPLETE"],
            tally["PRUNED"],
            tally["FAIL"],
            tally["interrupted"],
            tally["RUNNING"],
        )


def _runner_alive(system_attrs: dict[str, Any]) -> bool:
    owner = str(system_attrs.get(RUNNER_ATTR, ""))
    host, _, rest = owner.partition(":")
    pid = rest.partition(":")[0]
    if host == socket.gethostname() and pid.isdigit():
        if int(pid) == os.getpid():
            return False  # a trial of ours that is not running now is left over
        return _pid_alive(int(pid))
    beat = system_attrs.get(HEARTBEAT_ATTR)
    return beat is not None and time.time() - float(beat) < STALE_AFTER_S


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
