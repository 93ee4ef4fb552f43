"""Running a study: continue it up to its budget with the chosen executor, then summarise."""

from __future__ import annotations

import contextlib
import json
import time
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import optuna
from optuna.trial import FrozenTrial, TrialState

from drsearch.config.study import LoadedStudy
from drsearch.errors import StudyInterrupted
from drsearch.io import owned_dir
from drsearch.search.annotations import annotate_study, artifact_store, note_and_artifacts
from drsearch.search.checks import check_inputs
from drsearch.search.database import masked_url
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
    With ``retry_failed``, failed and interrupted trials are queued again with their
    parameters (continuing from their checkpoints where the recipe is unchanged).
    ``rerun`` is the command that continues this study (the CLI's own, with its options), for
    the message on Ctrl-C. A study continued under another definition (objective, space,
    recipe, pruner) is refused unless ``accept_changes``.
    """
    started = time.time()
    progress = progress or SilentProgress()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    cfg = loaded.config
    for warning in check_inputs(loaded):
        if not loaded.companion:  # the study it confirms has said them
            progress.warn(warning)
    store = _open(loaded, accept_changes, progress)
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
    reaped = store.reap_interrupted()
    # trials already there (a queued one, WAITING, is this run's once this runner claims it)
    before = {
        t.number for t in store.study.get_trials(deepcopy=False) if t.state != TrialState.WAITING
    }
    retried = [old for old, _ in store.enqueue_retries()] if retry_failed else []
    deadline = started + cfg.budget.time_limit_s if cfg.budget.time_limit_s else None
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
            raise StudyInterrupted(_interrupted_message(loaded, stopped, again)) from None
        except BaseException as exc:
            # any other way out (a database error, a Tune error): this runner's trials are let
            # go now, never left RUNNING under a process that lives on
            with contextlib.suppress(Exception):  # the database itself may be what failed
                store.interrupt_own(f"the runner stopped on {type(exc).__name__}: {exc}"[:300])
            raise
        finally:
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


def _interrupted_message(loaded: LoadedStudy, stopped: list[int], again: str) -> str:
    which = (
        f"trial(s) {', '.join(map(str, stopped))} marked interrupted"
        if stopped
        else ("no trial was running")
    )
    return (
        f"Interrupted: study {loaded.config.name}: {which} (they do not count toward the "
        f"budget). Continue with `{again}` (new trials take their place) or "
        f"`{again} --retry-failed` (they resume from their checkpoints)"
    )


def _open(
    loaded: LoadedStudy, accept_changes: bool = False, progress: StudyProgress | None = None
) -> StudyStore:
    """The study's store (refused when the study was created with another definition), its
    folders (inside the run root, marked as drsearch's), its definition and dashboard note,
    its artifact store and its budget."""
    from drsearch.search.definition import check_definition

    cfg = loaded.config
    store = StudyStore(cfg)
    if not loaded.companion:  # a confirmation study's runs are defined by its finalists
        with store.lock.hold():
            ranked = any(
                t.state in (TrialState.COMPLETE, TrialState.PRUNED) or paused_at(t) is not None
                for t in store.study.get_trials(deepcopy=False)
            )
            try:
                accepted = check_definition(
                    store.storage, store.study._study_id, loaded, accept_changes, ranked
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
