"""The Optuna study as the single source of truth: opening it, the budget, and idempotent writes.

Every write can be repeated safely (an intermediate value is overwritten with the same value,
a finished trial is never told twice), and a trial's final state is the last thing written,
so a runner killed at any moment leaves finished trials complete and unfinished ones RUNNING.
A later claim marks those FAIL with reason ``interrupted`` (they do not count toward the
budget) once the runner that owned them is gone.

The budget belongs to the study: ``n_trials`` is stored with it, and a trial is claimed under
a lock that every runner of the study takes (a file lock beside a SQLite database, an
advisory lock in PostgreSQL), so any number of runners together start exactly the budget.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import re
import socket
import threading
import time
import uuid
import warnings
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
from optuna.distributions import BaseDistribution
from optuna.samplers import BaseSampler
from optuna.storages import RDBStorage
from optuna.trial import FrozenTrial, TrialState

from drsearch.config.study import StudyConfig
from drsearch.errors import ConfigError
from drsearch.objective import Outcome

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


#: Query parameters of a URL whose values are secrets (``?password=...``, ``sslpassword``,
#: ``api_key``, ``token``...).
_SECRET_PARAM = re.compile(r"pass|pwd|secret|token|key|credential|auth", re.IGNORECASE)


def masked_url(url: str) -> str:
    """The URL with every secret hidden (the user-info password and password-like query
    parameters), for anything shown or written: console, records, recipes, errors."""
    from sqlalchemy.engine import make_url

    try:
        parsed = make_url(url)
    except Exception:  # noqa: BLE001 - not a URL we can take apart: show none of it
        return "<storage URL hidden: not a valid SQLAlchemy URL>"
    query = {k: ("***" if _SECRET_PARAM.search(k) else v) for k, v in parsed.query.items()}
    shown = parsed.set(query=query).render_as_string(hide_password=True)
    return shown.replace("%2A%2A%2A", "***")


def make_storage(url: str) -> RDBStorage:
    """An ``RDBStorage``; SQLite waits for locks instead of failing at once. A storage that
    cannot be opened is a one-line error with the URL's secrets masked."""
    from sqlalchemy.engine import make_url

    kwargs: dict[str, Any] = {}
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        kwargs = {"connect_args": {"timeout": 60}}
        if parsed.database and parsed.database != ":memory:":
            Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
    with storage_errors(url):
        return RDBStorage(url, engine_kwargs=kwargs)


@contextlib.contextmanager
def storage_errors(url: str) -> Iterator[None]:
    """Turn a database error into one line naming the storage, its secrets masked."""
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import SQLAlchemyError

    try:
        yield
    except SQLAlchemyError as exc:
        cause = str(getattr(exc, "orig", None) or exc).strip().splitlines()
        detail = cause[0] if cause else type(exc).__name__
        for secret in _secrets(make_url(url)):
            detail = detail.replace(secret, "***")
        raise ConfigError(f"storage {masked_url(url)}: cannot open it: {detail}") from None


def _secrets(parsed: Any) -> list[str]:
    found = [parsed.password] if parsed.password else []
    found += [v for k, v in parsed.query.items() if _SECRET_PARAM.search(k) and isinstance(v, str)]
    return [str(s) for s in found if s]


def open_existing(config: StudyConfig, source: Path | str) -> optuna.Study:
    """The study, for reading (report, export, dashboard): a one-line error, and no database
    file created, when it has not been run yet."""
    from sqlalchemy.engine import make_url

    url = config.storage_url()
    parsed = make_url(url)
    missing = (
        parsed.get_backend_name() == "sqlite"
        and parsed.database not in (None, "", ":memory:")
        and not Path(str(parsed.database)).is_file()
    )
    if not missing:
        optuna.logging.set_verbosity(optuna.logging.WARNING)
        try:
            return optuna.load_study(study_name=config.name, storage=make_storage(url))
        except KeyError:
            pass
    raise ConfigError(
        f"{source}: no study {config.name!r} in {masked_url(url)} yet; run it first with "
        f"`drsearch run {source}`"
    )


class StudyLock:
    """A lock every runner of a study takes to claim a trial (and to create the study).

    SQLite: ``flock`` on ``<database>.lock`` (one machine; SQLite is not for several).
    PostgreSQL: a session advisory lock keyed by the study name, so runners on any machine
    that reaches the server exclude each other. Not re-entrant.
    """

    def __init__(self, url: str, name: str) -> None:
        from sqlalchemy.engine import make_url

        parsed = make_url(url)
        self.backend = parsed.get_backend_name()
        self.url = url
        self.file: Path | None = None
        self._engine: Any = None
        if self.backend == "sqlite":
            if parsed.database and parsed.database != ":memory:":
                self.file = Path(parsed.database + ".lock")
        elif self.backend != "postgresql":
            raise ConfigError(
                f"storage: {self.backend} is not supported; use SQLite (the default) or "
                "PostgreSQL (postgresql+psycopg2://user@host/db)"
            )
        digest = hashlib.sha256(f"drsearch:{name}".encode()).digest()
        self.key = int.from_bytes(digest[:8], "big", signed=True)

    @contextlib.contextmanager
    def hold(self) -> Iterator[None]:
        if self.backend == "postgresql":
            yield from self._advisory()
        elif self.file is not None:
            self.file.parent.mkdir(parents=True, exist_ok=True)
            with self.file.open("a") as fh:
                fcntl.flock(fh, fcntl.LOCK_EX)
                try:
                    yield
                finally:
                    fcntl.flock(fh, fcntl.LOCK_UN)
        else:
            yield

    def _advisory(self) -> Iterator[None]:
        from sqlalchemy import create_engine, text
        from sqlalchemy.pool import NullPool

        if self._engine is None:
            self._engine = create_engine(self.url, poolclass=NullPool)
        with storage_errors(self.url):
            conn = self._engine.connect()
        with conn:
            conn.execute(text("SELECT pg_advisory_lock(:k)"), {"k": self.key})
            try:
                yield
            finally:
                conn.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": self.key})


def trial_seed(seed: int, number: int) -> int:
    """The sampler seed of trial ``number``: fixed by the study seed and the trial alone."""
    digest = hashlib.sha256(f"drsearch-sampler:{seed}:{number}".encode()).digest()
    return int.from_bytes(digest[:4], "big")


class TrialSeededSampler(BaseSampler):
    """A sampler rebuilt before every trial with a seed derived from the study seed and the
    trial number.

    A seeded study stays reproducible (trial ``n`` always draws from the same stream), and a
    continued study or a second runner never replays an earlier trial's draws, as rebuilding
    one sampler with the study seed in every process would. The samplers drsearch uses keep
    their state in the study (TPE, GP and random read the history each time; CMA-ES stores
    its optimizer in trial attributes), so a fresh instance per trial loses nothing.
    """

    def __init__(self, factory: Callable[[int | None], BaseSampler], seed: int | None) -> None:
        self._factory = factory
        self._seed = seed
        self._inner = factory(None if seed is None else trial_seed(seed, -1))

    def before_trial(self, study: optuna.Study, trial: FrozenTrial) -> None:
        if self._seed is not None:
            self._inner = self._factory(trial_seed(self._seed, trial.number))
        self._inner.before_trial(study, trial)

    def infer_relative_search_space(
        self, study: optuna.Study, trial: FrozenTrial
    ) -> dict[str, BaseDistribution]:
        return self._inner.infer_relative_search_space(study, trial)

    def sample_relative(
        self, study: optuna.Study, trial: FrozenTrial, search_space: dict[str, BaseDistribution]
    ) -> dict[str, Any]:
        return self._inner.sample_relative(study, trial, search_space)

    def sample_independent(
        self,
        study: optuna.Study,
        trial: FrozenTrial,
        param_name: str,
        param_distribution: BaseDistribution,
    ) -> Any:
        return self._inner.sample_independent(study, trial, param_name, param_distribution)

    def after_trial(
        self,
        study: optuna.Study,
        trial: FrozenTrial,
        state: TrialState,
        values: Sequence[float] | None,
    ) -> None:
        self._inner.after_trial(study, trial, state, values)

    def reseed_rng(self) -> None:
        self._inner.reseed_rng()


def make_sampler(config: StudyConfig) -> BaseSampler:
    """The study's sampler, seeded per trial (``TrialSeededSampler``). TPE runs with
    ``constant_liar``: trials running in other workers or runners count as bad results, so
    concurrent trials are not proposed next to each other."""
    s = config.sampler

    def build(seed: int | None) -> BaseSampler:
        if s.name == "random":
            return optuna.samplers.RandomSampler(seed=seed)
        if s.name == "gp":
            return optuna.samplers.GPSampler(seed=seed, n_startup_trials=s.n_startup_trials)
        if s.name == "cmaes":
            return optuna.samplers.CmaEsSampler(
                seed=seed, n_startup_trials=s.n_startup_trials, warn_independent_sampling=False
            )
        with warnings.catch_warnings():  # multivariate/group are "experimental" since 2.2
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            return optuna.samplers.TPESampler(
                seed=seed,
                n_startup_trials=s.n_startup_trials,
                multivariate=True,
                group=True,
                constant_liar=True,
            )

    return TrialSeededSampler(build, s.seed)


def make_pruner(config: StudyConfig) -> optuna.pruners.BasePruner:
    """ASHA as Optuna implements it (``SuccessiveHalvingPruner``), for both executors.

    Its rungs are stored with the trials, so they survive a restart and are shared by every
    runner of the study; ``drsearch.runners.common.after_epoch`` asks it after each epoch.
    """
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
    retried: int = 0  # failed trials replaced by a re-run (--retry-failed)

    @property
    def counted(self) -> int:
        """Trials that used up the budget: complete, pruned, and failed by their own fault."""
        return self.complete + self.pruned + self.failed

    @property
    def claimed(self) -> int:
        """Counted trials plus those running now: what a new claim is checked against."""
        return self.counted + self.running


def retried_numbers(trials: Sequence[FrozenTrial]) -> set[int]:
    """Failed trials that a re-run (queued or started) replaces."""
    return {int(t.user_attrs[RETRY_OF]) for t in trials if RETRY_OF in t.user_attrs}


def count_trials(trials: Sequence[FrozenTrial]) -> Counts:
    tally: Counter[str] = Counter()
    retried = retried_numbers(trials)
    for t in trials:
        if t.state == TrialState.FAIL and t.user_attrs.get("fail_reason") == INTERRUPTED:
            tally["interrupted"] += 1
        elif t.state == TrialState.FAIL and t.number in retried:
            tally["retried"] += 1
        else:
            tally[t.state.name] += 1
    return Counts(
        tally["COMPLETE"],
        tally["PRUNED"],
        tally["FAIL"],
        tally["interrupted"],
        tally["RUNNING"],
        tally["retried"],
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

    # -- bookkeeping -----------------------------------------------------------------------
    def reap_interrupted(self) -> list[int]:
        """Mark RUNNING trials whose runner is gone as FAIL (``interrupted``); their numbers."""
        with self.lock.hold():
            return self._reap()

    def _reap(self) -> list[int]:
        reaped = []
        for trial in self.study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
            if runner_alive(trial.system_attrs, self.runner):
                continue
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
