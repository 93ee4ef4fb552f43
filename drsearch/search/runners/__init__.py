"""Running a study: continue it up to its budget with the chosen executor, then summarise."""

from __future__ import annotations

import contextlib
import json
import time
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from drsearch.config.study import LoadedStudy
from drsearch.errors import StudyInterrupted
from drsearch.io import owned_dir
from drsearch.search.annotations import annotate_study, artifact_store, note_and_artifacts
from drsearch.search.checks import LOW_POWER, check_inputs
from drsearch.search.database import hide_secrets, masked_url
from drsearch.search.deadline import Deadline
from drsearch.search.runners.common import SilentProgress, StudyProgress, study_runs, trial_dir
from drsearch.search.scheduler import RungScheduler, paused_at, promotes
from drsearch.search.selection import closest_infeasible, search_best_trial
from drsearch.search.store import (
    INTERRUPTED,
    RETRY_OF,
    RUNNER_ATTR,
    Counts,
    StudyStore,
)
from drsearch.search.verdict import provisional_best


@dataclass
class StudySummary:
    """What one ``drsearch run`` did and where the study stands after it."""

    name: str
    storage: str  # password masked
    counts: Counts
    n_trials: int
    reaped: list[int]
    started_trials: int
    wall_seconds: float
    trial_seconds: float  # summed wall time of the trials this run executed
    best: FrozenTrial | None  # the search's best feasible trial (selection.search_best_trial)
    closest: FrozenTrial | None  # none feasible: the complete trial of highest value
    first_failure: str | None
    retried: list[int] = field(default_factory=list)  # failed trials queued again
    #: interrupted trials whose configurations this run queued again, and those it left
    #: (interrupted ``MAX_INTERRUPTIONS`` times in a row: ``--retry-failed`` queues them)
    requeued: list[int] = field(default_factory=list)
    given_up: list[int] = field(default_factory=list)
    #: the run's time limit and what happened at it (``None``: no limit)
    deadline: Deadline | None = None
    #: no trial trained to the end: the best by its value at the highest rung, and that epoch
    provisional: tuple[FrozenTrial, int] | None = None
    #: trials paused at a rung when the run ended: (number, rung epoch)
    paused: list[tuple[int, int]] = field(default_factory=list)
    duplicates: list[list[int]] = field(default_factory=list)  # trials with equal parameters
    runs_dir: Path | None = None
    waiting: list[int] = field(default_factory=list)  # queued trials the budget left unstarted
    failures: list[tuple[str, int]] = field(default_factory=list)  # reason, how many (top 3)
    tracking_steps: list[tuple[str, str]] = field(default_factory=list)  # e.g. mlflow ui ...
    queued: list[str] = field(default_factory=list)  # baseline / warm start queued by this run

    @property
    def best_feasible(self) -> bool:
        return self.best is not None


def run_study(
    loaded: LoadedStudy,
    progress: StudyProgress | None = None,
    ray_address: str | None = None,
    retry_failed: bool = False,
    rerun: str | None = None,
    accept_changes: bool = False,
) -> StudySummary:
    """Run ``loaded`` until the study's budget is spent (or the time limit), with its executor.

    ``budget.n_trials`` is written to the study: the budget of every runner of it from now on.
    Interrupted trials are queued again with their parameters (continuing from their
    checkpoints where the recipe is unchanged); with ``retry_failed``, failed ones too.
    ``rerun`` is the command that continues this study (the CLI's own, with its options), for
    the message on Ctrl-C. A study continued under another definition (objective, space,
    recipe, pruner, data) is refused unless ``accept_changes``.
    """
    started = time.time()
    progress = progress or SilentProgress()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    cfg = loaded.config
    data: dict[str, Any] = {}  # the data's fingerprint, as the checks list them
    said = check_inputs(loaded, data=data)
    store = _open(loaded, accept_changes, progress, data or None)
    fresh = not store.study.get_trials(deepcopy=False)
    for warning in said:
        # the study it confirms has said them; power is said before a study starts
        if not loaded.companion and (fresh or LOW_POWER not in warning):
            progress.warn(warning)
    from drsearch.search.tracking import TrackedProgress, open_tracking

    tracking = open_tracking(
        loaded, store, lambda number: trial_dir(loaded, store, number), progress.warn
    )
    if tracking is not None:  # its runs made equal to the study before any trial
        tracking.sync()
        progress = TrackedProgress(progress, tracking)
    from drsearch.search.warmstart import queue

    try:  # the baseline and a warm start, once per study (a bad source: refused up front)
        queued = queue(store, loaded)
    except BaseException:
        store.close()
        raise
    for line in queued.warnings:  # a configuration refused or a key dropped
        progress.warn(line)
    with store.lock.hold():
        reaped = store.reap_locked()
        requeued = store.requeue_locked()  # interrupted configurations run again
    # trials already there (a queued one, WAITING, is this run's once this runner claims it)
    before = {
        t.number for t in store.study.get_trials(deepcopy=False) if t.state != TrialState.WAITING
    }
    retried = [old for old, _ in store.enqueue_retries()] if retry_failed else []
    deadline = (
        None
        if cfg.budget.time_limit_s is None
        else Deadline(cfg.budget.time_limit_s, cfg.budget.finish_grace_s, loaded.max_epochs)
    )
    if store.counts().paused and not promotes(cfg.pruner):
        # paused by promotion ASHA in an earlier run; this study file no longer resumes them
        for number, _ in RungScheduler(store, loaded.max_epochs).prune_paused(wait=False) or []:
            progress.warn(f"trial {number}: paused by promotion ASHA, pruned (pruner.mode changed)")
    counts = store.counts()
    if counts.claimed < store.budget() or counts.paused:  # paused: promotion ASHA goes on
        store.start_heartbeat()
        try:
            if cfg.executor == "local":
                from drsearch.search.runners.local import run_local

                run_local(store, loaded, progress, deadline)
            else:
                from drsearch.search.runners.ray import ray_session, run_ray

                with ray_session(ray_address or cfg.ray.address):
                    run_ray(store, loaded, progress, deadline)
        except KeyboardInterrupt:
            stopped = store.interrupt_own()
            again = rerun or f"drsearch run {loaded.path}"
            raise StudyInterrupted(_interrupted_message(loaded, store, stopped, again)) from None
        except BaseException as exc:
            # any other way out (a database error, a Tune error): this runner's trials are let
            # go now, never left RUNNING under a process that lives on
            with contextlib.suppress(Exception):  # the database itself may be what failed
                said = hide_secrets(f"{exc}", cfg.storage_url())  # a URL's password, say
                store.interrupt_own(f"the runner stopped on {type(exc).__name__}: {said}"[:300])
            raise
        finally:
            if deadline is not None:
                deadline.ended = time.time()
            if tracking is not None:  # runs of trials that ended without this runner's hooks
                tracking.close()
            store.close()
    elif tracking is not None:  # nothing to run: its runs made equal to the study all the same
        tracking.close()
    trials = store.study.get_trials(deepcopy=False)
    # the trials this runner claimed: another runner on the study claims its own
    ours = [
        t
        for t in trials
        if t.number not in before and t.system_attrs.get(RUNNER_ATTR) == str(store.runner)
    ]

    return StudySummary(
        name=cfg.name,
        storage=masked_url(cfg.storage_url()),
        counts=store.counts(),
        n_trials=store.budget(),
        reaped=reaped,
        started_trials=len(ours),
        wall_seconds=time.time() - started,
        trial_seconds=sum(float(t.user_attrs.get("wall_seconds") or 0) for t in ours),
        tracking_steps=[] if tracking is None else tracking.next_steps(),
        queued=queued.done,
        best=search_best_trial(store.study),
        closest=closest_infeasible(store.study),
        first_failure=_first_failure(trials),
        retried=retried,
        requeued=requeued.queued,
        given_up=requeued.given_up,
        deadline=deadline,
        provisional=provisional_best(store.study),
        paused=[(t.number, e) for t in trials if (e := paused_at(t)) is not None],
        duplicates=duplicate_params(trials),
        runs_dir=study_runs(loaded, store),
        waiting=[t.number for t in trials if t.state == TrialState.WAITING],
        failures=_failures(trials),
    )


@contextlib.contextmanager
def executor_session(loaded: LoadedStudy, ray_address: str | None = None) -> Iterator[None]:
    """Hold the study's executor across several ``run_study`` calls (a search and its finalist
    stage share one Ray session instead of starting Ray twice)."""
    if loaded.config.executor != "ray":
        yield
        return
    from drsearch.search.runners.ray import ray_session

    with ray_session(ray_address or loaded.config.ray.address):
        yield


def duplicate_params(trials: list[FrozenTrial]) -> list[list[int]]:
    """Groups of trials that ran the same parameters (re-runs of a failed trial excepted)."""
    groups: dict[str, list[int]] = {}
    for t in trials:
        if t.state == TrialState.WAITING or RETRY_OF in t.user_attrs or not t.params:
            continue
        key = json.dumps(t.params, sort_keys=True, default=str)
        groups.setdefault(key, []).append(t.number)
    return [numbers for numbers in groups.values() if len(numbers) > 1]


def _interrupted_message(
    loaded: LoadedStudy, store: StudyStore, stopped: list[int], again: str
) -> str:
    """What Ctrl-C did to each of this runner's trials and what the continue command will do
    with them: an interrupted configuration runs again (``requeue_locked``), from its
    checkpoint when an epoch had finished, else afresh; a promoted trial went back to its
    rung."""
    from drsearch.search.store import MAX_INTERRUPTIONS, interruptions

    trials = {t.number: t for t in store.study.get_trials(deepcopy=False)}
    resumed, fresh, paused, left, undrawn = [], [], [], [], []
    for number in stopped:
        t = trials[number]
        if paused_at(t) is not None:
            paused.append(f"{number} (back at its rung, epoch {paused_at(t)})")
        elif not (t.params or t.system_attrs.get("fixed_params")):
            undrawn.append(str(number))
        elif interruptions(t, trials) >= MAX_INTERRUPTIONS:
            left.append(str(number))
        elif (trial_dir(loaded, store, number) / "checkpoints" / "last.pt").is_file():
            resumed.append(str(number))
        else:
            fresh.append(str(number))
    parts = []
    if resumed:
        parts.append(f"trial(s) {', '.join(resumed)} resume from their last checkpoint")
    if fresh:
        parts.append(f"trial(s) {', '.join(fresh)} start again (no epoch had finished)")
    if paused:
        parts.append(f"trial(s) {', '.join(paused)} wait for a promotion as before")
    said = f"Interrupted: study {loaded.config.name}. Continue with `{again}`"
    if not stopped:
        said += " (no trial was running)"
    elif parts:
        said += (
            ": " + "; ".join(parts) + ", each with its own parameters (an interrupted trial "
            "never counts toward the budget)"
        )
    if undrawn:
        said += (
            f"{'.' if parts or left else ':'} Trial(s) {', '.join(undrawn)} had drawn no "
            "parameters yet: new draws take their place"
        )
    if left:
        said += (
            f". Trial(s) {', '.join(left)} were interrupted {MAX_INTERRUPTIONS} times in a row "
            "and are not queued again: --retry-failed queues them (with a budget that has room: "
            "--n-trials)"
        )
    return said


def _open(
    loaded: LoadedStudy,
    accept_changes: bool = False,
    progress: StudyProgress | None = None,
    data: dict[str, Any] | None = None,
) -> StudyStore:
    """The study's store (refused when the study was created with another definition or on
    other data: ``data``, their fingerprint now), its folders (inside the run root, marked as
    drsearch's), its definition and dashboard note, its artifact store and its budget."""
    from drsearch.search.definition import check_definition, check_parent_data
    from drsearch.search.selection import parent_name

    cfg = loaded.config
    store = StudyStore(cfg, queue_only=loaded.companion)
    if loaded.companion:  # its runs are defined by its parent's finalists, on its data
        try:
            check_parent_data(store.storage, parent_name(cfg.name), loaded, data)
        except BaseException:
            store.close()
            raise
    else:
        with store.lock.hold():
            ranked = any(
                t.state in (TrialState.COMPLETE, TrialState.PRUNED) or paused_at(t) is not None
                for t in store.study.get_trials(deepcopy=False)
            )
            try:
                accepted = check_definition(
                    store.storage, store.study._study_id, loaded, accept_changes, ranked, data
                )
            except BaseException:
                store.close()
                raise
            changed = store.note_sampler()
        if accepted and progress is not None:
            progress.warn(f"continuing under a changed definition: {'; '.join(accepted[:4])}")
        if changed and progress is not None:
            progress.warn(changed)
    owned_dir(cfg.study_dir, cfg.run_root, "study run folders")
    owned_dir(study_runs(loaded, store), cfg.study_dir, "run folders of one study")
    _describe(store.study, loaded)
    from drsearch.search.selection import FINALISTS_ATTR

    annotate_study(store.study, loaded, store.study.user_attrs.get(FINALISTS_ATTR))
    store.artifacts = artifact_store(loaded)
    if store.artifacts is not None:  # every ended trial: note and artifacts, before its tell
        store.before_tell = note_and_artifacts(store.artifacts, cfg)
    store.set_budget(cfg.budget.n_trials)
    return store


def _describe(study: optuna.Study, loaded: LoadedStudy) -> None:
    """The study's definition, stored with it (no storage URL: it may hold a password)."""
    cfg = loaded.config
    study.set_metric_names([f"objective({cfg.objective.metric})"])
    study.set_user_attr("drsearch_study_file", str(loaded.path))
    study.set_user_attr("objective", cfg.objective.model_dump(mode="json"))
    study.set_user_attr("pruner", cfg.pruner.model_dump(mode="json"))
    study.set_user_attr(
        "search_space", {k: p.model_dump(mode="json") for k, p in loaded.space.items()}
    )
    study.set_user_attr("recipe", loaded.recipe.model_dump(mode="json"))
    study.set_user_attr(
        "metrics_measured_on",
        "validation: the split the search pruned and ranked on (optimistic); the held-out "
        "test split is read only by drsearch evaluate",
    )


def _failures(trials: list[FrozenTrial]) -> list[tuple[str, int]]:
    """Why trials failed (interrupted ones aside), the commonest reasons first."""
    from collections import Counter

    reasons = Counter(
        str(t.user_attrs.get("fail_reason") or "unknown")
        for t in trials
        if t.state == TrialState.FAIL and t.user_attrs.get("fail_reason") != INTERRUPTED
    )
    return reasons.most_common(3)


def _first_failure(trials: list[FrozenTrial]) -> str | None:
    for t in trials:
        reason = t.user_attrs.get("fail_reason")
        if t.state == TrialState.FAIL and reason and reason != INTERRUPTED:
            return f"trial {t.number}: {reason}"
    return None
