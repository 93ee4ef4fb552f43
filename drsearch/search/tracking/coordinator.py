"""A study's tracking: its backends fed by the search driver's progress hooks, kept in line
with the study.

The Optuna study is the truth and a tracked run a view of it that converges to it. A write
that fails is retried for a few seconds (``RETRY_S``); one that still fails leaves the
backend *behind*: one warning, a line in the ledger (``ledger.Ledger``), and the study goes on
(training never waits on a tracking store). A backend behind is caught up, at the next epoch
or trial of this runner (at most every ``CATCH_UP_S`` while its store stays down), at the end
of the run, and by the next ``drsearch run``, ``drsearch report`` or ``drsearch sync``, by a
reconcile (``reconcile.reconcile``) that makes every trial's run equal to the study, under
the study's lock (runners reconciling at once never make a run twice).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from drsearch.config.study import LoadedStudy
from drsearch.search.tracking.common import (
    Backend,
    home_name,
    mlflow_uri,
    origin_tags,
    read_epochs,
    run_folder,
    shown_params,
    target,
)
from drsearch.search.tracking.ledger import Ledger
from drsearch.search.tracking.reconcile import Fix, bring, reconcile, study_trial
from drsearch.search.trial import Outcome

#: How long one write is retried (doubling pauses from 0.2 s) before its backend falls behind.
RETRY_S = 3.0
#: After a catch-up that failed, the next is tried this many seconds later, doubling to a cap.
CATCH_UP_S = (5.0, 300.0)


@dataclass
class Feed:
    """One backend as the study's tracking holds it: made when its store first answers."""

    name: str
    where: str  # secrets masked
    hide: Callable[[str], str]
    make: Callable[[], Backend]
    next_step: tuple[str, str] | None = None
    #: caught up during the run (MLflow); W&B's client keeps its own queue through network
    #: trouble, so a failure that reaches drsearch waits for the run's end (its init may
    #: block for a minute: never at every epoch)
    in_run: bool = True
    backend: Backend | None = None
    behind: bool = False  # writes lost since its last reconcile: a catch-up is owed
    failures: int = 0  # catch-ups failed in a row
    next_try: float = 0.0
    error: str = ""


@dataclass
class Followed:
    """The study a tracking follows: its Optuna study, its UUID (``drsearch.study``) and the
    lock its runners share (a ``StudyStore`` has all three)."""

    study: Any
    uuid: str
    lock: Any

    def trial(self, number: int) -> Any:
        return study_trial(self.study, number)


class StudyTracking:
    """A study's tracking: its backends, fed by the search driver's progress hooks."""

    def __init__(
        self,
        loaded: LoadedStudy,
        followed: Any,
        run_dir: Callable[[int], Path] | None,
        feeds: list[Feed],
        warn: Callable[[str], None],
    ) -> None:
        self.loaded, self.followed, self.run_dir, self.warn = loaded, followed, run_dir, warn
        self.feeds = feeds
        self.ledger = Ledger(loaded.config.run_root / f"{loaded.config.name}-tracking-ledger.jsonl")
        self.active: dict[int, dict[str, str]] = {}  # trials this runner runs: their params
        self.ran = False  # whether this runner started a trial (and set the study RUNNING)
        cfg = loaded.config
        self.params = {
            "study": cfg.name, "objective.metric": cfg.objective.metric,
            "objective.constraints": json.dumps(
                [[c.metric, c.min] for c in cfg.objective.constraints]),
            "sampler": cfg.sampler.label(),
            "pruner": json.dumps(cfg.pruner.model_dump(mode="json")),
            "search_space": json.dumps(sorted(loaded.space)),
        }  # fmt: skip
        with followed.lock.hold():  # runners starting together find or create one study run
            for feed in feeds:
                self._start(feed)

    def next_steps(self) -> list[tuple[str, str]]:
        """The commands that open what the backends wrote, for ``run``'s next steps."""
        return [f.next_step for f in self.feeds if f.next_step is not None]

    # -- writing, retrying, falling behind --------------------------------------------------
    def _make(self, feed: Feed, again: Callable[[Callable[[], Any]], Any]) -> Backend:
        """The backend, its study's run found or made (each step through ``again``)."""
        backend: Backend = again(feed.make)
        name = self.loaded.config.name
        again(lambda: backend.open_study(self.followed.uuid, name, self.params))
        return backend

    def _start(self, feed: Feed) -> None:
        """Make the backend and find or create the study's run; behind when it fails."""
        try:
            feed.backend = self._make(feed, _retried)
        except Exception as exc:  # noqa: BLE001 - a store down costs a warning, never a trial
            self._fall_behind(feed, exc, "could not start")

    def _fall_behind(self, feed: Feed, exc: BaseException, what: str = "failed") -> None:
        shown = feed.hide(str(exc)).strip()  # masked whole, then cut: no half secret shown
        feed.error = f"{type(exc).__name__}: {shown.splitlines()[0][:200] if shown else ''}"
        if feed.behind and self.ledger.owed(feed.name) is None:  # paid by another runner
            self.ledger.owe(feed.name, feed.error)  # since: this one still owes its own
        if not feed.behind:  # one warning and one ledger line per outage
            soon = "the next epoch or trial, " if feed.in_run else "the end of this run, "
            self.warn(
                f"{feed.name} tracking at {feed.where} {what} ({feed.error}); the study goes "
                f"on, and its runs catch up with it when the store answers again (at {soon}"
                f"the next run or report, or `drsearch sync {self.loaded.path}`)"
            )
            self.ledger.owe(feed.name, feed.error)
        feed.behind = True
        feed.failures += 1
        feed.next_try = time.monotonic() + min(
            CATCH_UP_S[0] * 2 ** (feed.failures - 1), CATCH_UP_S[1]
        )

    def _write(self, call: Callable[[Backend], Any], locked: bool = False) -> None:
        """``call`` on every backend that is in step (retried); a backend behind is caught up
        instead when it is due (the reconcile writes what ``call`` would have)."""
        for feed in self.feeds:
            if feed.behind:
                if feed.in_run and time.monotonic() >= feed.next_try:
                    self._catch_up(feed)
                continue
            backend = feed.backend
            assert backend is not None
            try:
                if locked:
                    with self.followed.lock.hold():
                        _retried(lambda b=backend: call(b))  # type: ignore[misc]
                else:
                    _retried(lambda b=backend: call(b))  # type: ignore[misc]
            except Exception as exc:  # noqa: BLE001 - tracking never costs a trial
                self._fall_behind(feed, exc)

    def _catch_up(self, feed: Feed) -> None:
        """One try (no retries: its store was down a moment ago) to bring a backend behind
        in line with the study, this runner's running trials included."""
        try:
            with self.followed.lock.hold():
                trials = self.followed.study.get_trials(deepcopy=False)
                fixes = self._reconcile(feed, trials, retry=False)
        except Exception as exc:  # noqa: BLE001 - still down: tried again later
            self._fall_behind(feed, exc)
            return
        self.warn(
            f"{feed.name} tracking at {feed.where} answers again: its runs caught up with "
            f"the study ({_count(fixes)})"
        )

    def _reconcile(self, feed: Feed, trials: list[Any], retry: bool) -> list[Fix]:
        """Reconcile one backend with ``trials`` (the study's, read under its lock, still
        held); it is in step afterwards."""
        mark = self.ledger.mark()
        deep = feed.behind or self.ledger.owed(feed.name) is not None
        again = _retried if retry else (lambda call: call())
        if feed.backend is None:
            feed.backend = self._make(feed, again)
        backend = feed.backend

        by_number = {t.number: t for t in trials}

        def run() -> list[Fix]:
            fixes = reconcile(backend, trials, deep, self.run_dir)
            for number, params in list(self.active.items()):  # this runner's, running
                trial = by_number.get(number)
                if trial is None or target(trial) is not None:  # ended or paused: done above
                    self.active.pop(number, None)
                    continue
                backend.trial_run(number, params, origin_tags(trial.user_attrs), running=True)
                self._log_epochs(backend, number)
            return fixes

        fixes = again(run)
        feed.behind, feed.failures, feed.next_try = False, 0, 0.0
        self.ledger.paid(feed.name, mark)
        return fixes

    def sync(self, quiet: bool = False) -> dict[str, list[Fix] | str]:
        """Bring every backend's runs in line with the study (under the study's lock): each
        trial's run made or ended as the study says, the epochs it lacks logged, the study's
        run FINISHED when no trial runs or waits at a rung. Per backend: what was fixed, or
        why it could not be (it stays behind, owed in the ledger). Unless ``quiet``, a
        backend that needed fixes says so in one line."""
        out: dict[str, list[Fix] | str] = {}
        # this runner's own trials let go without their hooks (Ctrl-C), and the study's run
        # it set RUNNING itself, are ended here as a matter of course: no repair to report
        mine: set[int | None] = {*self.active, *([None] if self.ran else [])}
        with self.followed.lock.hold():
            trials = self.followed.study.get_trials(deepcopy=False)
            for feed in self.feeds:
                try:  # a store that could not start a moment ago is tried once
                    fixes = self._reconcile(feed, trials, retry=feed.backend is not None)
                except Exception as exc:  # noqa: BLE001 - a store down: owed, said once
                    self._fall_behind(feed, exc)
                    out[feed.name] = feed.error
                    continue
                out[feed.name] = fixes
                others = [f for f in fixes if f.number not in mine]
                if others and not quiet:
                    self.warn(
                        f"{feed.name} tracking at {feed.where}: runs brought in line with the "
                        f"study: {_count(others)}"
                    )
        return out

    def close(self) -> None:
        """The end of a run: a last ``sync``; a backend still behind says so, with what
        keeps it owed and the command that catches it up."""
        try:
            results = self.sync()
        except Exception as exc:  # noqa: BLE001 - the study's own database (or its lock)
            # failed: the run says so itself, and its error may name the storage: not repeated
            reason = f"the study could not be read ({type(exc).__name__})"
            for feed in self.feeds:
                self.ledger.owe(feed.name, reason)
            results = {feed.name: reason for feed in self.feeds}
        for name, result in results.items():
            if isinstance(result, str):
                self.warn(
                    f"{name} tracking is still behind the study ({result}); "
                    f"{self.ledger.path} keeps it owed: `drsearch sync {self.loaded.path}` "
                    "(or the next run or report) catches it up"
                )

    # -- the progress hooks -----------------------------------------------------------------
    def _log_epochs(self, backend: Backend, number: int) -> None:
        folder = self.run_dir(number) if self.run_dir is not None else None
        for epoch, metrics in read_epochs(folder, backend.last_epoch(number)):
            backend.log_epoch(number, epoch, metrics)  # each backend skips what it has

    def trial_started(self, number: int, params: dict[str, Any]) -> None:
        shown = shown_params(params)
        self.active[number], self.ran = shown, True
        tags = origin_tags(self.followed.trial(number).user_attrs)

        def start(b: Backend) -> None:
            b.study_status(True)
            b.trial_run(number, shown, tags, running=True)

        self._write(start)

    def trial_epoch(self, number: int) -> None:
        self._write(lambda b: self._log_epochs(b, number))

    def _folder(self, trial: Any) -> Path | None:
        found = run_folder(trial)
        return found or (self.run_dir(trial.number) if self.run_dir is not None else None)

    def trial_paused(self, number: int, epoch: int) -> None:
        self.active.pop(number, None)
        trial = self.followed.trial(number)
        self._write(lambda b: bring(b, trial, None, self._folder(trial), force=True))

    def trial_finished(self, number: int, outcome: Outcome) -> None:
        """The trial's run ended as the study now holds it (its record, not only this
        runner's outcome). A trial this runner did not start (a paused trial pruned when
        nothing runs) is found by its tags, or made, under the study's lock."""
        mine = self.active.pop(number, None) is not None
        trial = self.followed.trial(number)
        folder = self._folder(trial)
        self._write(lambda b: bring(b, trial, None, folder, force=True), locked=not mine)


def _count(fixes: list[Fix]) -> str:
    if not fixes:
        return "nothing to fix"
    shown = "; ".join(str(f) for f in fixes[:3])
    return f"{len(fixes)} fixed: {shown}" + ("; ..." if len(fixes) > 3 else "")


def _retried(call: Callable[[], Any]) -> Any:
    """``call()``, retried with doubling pauses for at most ``RETRY_S`` seconds in all (a
    SQLite store locked by another runner a moment, a server restarting)."""
    started, pause = time.monotonic(), 0.2
    while True:
        try:
            return call()
        except Exception:
            if time.monotonic() - started + pause > RETRY_S:
                raise
            time.sleep(pause)
            pause *= 2


class TrackedProgress:
    """The runner's progress display, and the study's tracking fed from the same hooks."""

    def __init__(self, inner: Any, tracking: StudyTracking) -> None:
        self.inner, self.tracking = inner, tracking

    def trial_started(self, number: int, params: dict[str, Any]) -> None:
        self.inner.trial_started(number, params)
        self.tracking.trial_started(number, params)

    def trial_epoch(self, number: int, epoch: int, value: float) -> None:
        self.inner.trial_epoch(number, epoch, value)
        self.tracking.trial_epoch(number)

    def trial_finished(self, number: int, outcome: Outcome) -> None:
        self.inner.trial_finished(number, outcome)
        self.tracking.trial_finished(number, outcome)

    def trial_paused(self, number: int, epoch: int) -> None:
        self.inner.trial_paused(number, epoch)
        self.tracking.trial_paused(number, epoch)

    def warn(self, message: str) -> None:
        self.inner.warn(message)


def open_tracking(
    loaded: LoadedStudy,
    followed: Any,
    run_dir: Callable[[int], Path] | None,
    warn: Callable[[str], None],
) -> StudyTracking | None:
    """The study's tracking, or ``None`` when it asks for none (or its package is missing:
    one warning). A store that cannot be reached costs a warning; the study's runs catch up
    when it answers again. ``followed``: a ``StudyStore``, or a ``Followed``."""
    from drsearch.search.database import hide_secrets, masked_url

    cfg = loaded.config
    home = home_name(loaded)
    feeds: list[Feed] = []
    uri = mlflow_uri(loaded)
    if uri is not None and _installed("mlflow", "MLflow", warn):
        from drsearch.search.tracking import mlflow_backend

        experiment = (cfg.tracking.mlflow.experiment if cfg.tracking.mlflow else None) or home
        artifacts = cfg.run_root / f"{home}-mlflow-artifacts"
        feeds.append(
            Feed(
                "MLflow",
                masked_url(uri),
                lambda t: hide_secrets(t, uri),
                lambda: mlflow_backend.MLflowBackend(uri, experiment, artifacts),
                mlflow_backend.next_step(uri),
            )
        )
    w = cfg.tracking.wandb
    if w is not None and _installed("wandb", "W&B", warn):
        from drsearch.search.tracking import wandb_backend

        folder = cfg.run_root / f"{home}-wandb"
        project = w.project or home
        feeds.append(
            Feed(
                "W&B",
                f"project {project}",
                lambda t: t,
                lambda: wandb_backend.WandbBackend(project, w.entity, w.mode, folder),
                wandb_backend.next_step(w.mode, folder),
                in_run=False,
            )
        )
    if not feeds:
        return None
    followed = Followed(followed.study, followed.uuid, followed.lock)
    return StudyTracking(loaded, followed, run_dir, feeds, warn)


def _installed(package: str, name: str, warn: Callable[[str], None]) -> bool:
    import importlib.util

    if importlib.util.find_spec(package) is not None:
        return True
    warn(f"{name} tracking is asked for but {package} is not installed: pip install "
         "'drsearch[tracking]'; the study runs without it")  # fmt: skip
    return False
