"""Running a study: continue it up to its budget with the chosen executor, then summarise."""

from __future__ import annotations

import time
import warnings
from dataclasses import dataclass

import optuna
from optuna.trial import FrozenTrial, TrialState

from drsearch.runners.common import SilentProgress, StudyProgress
from drsearch.storage import INTERRUPTED, Counts, StudyStore, masked_url
from drsearch.study import LoadedStudy, check_weights_exist


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
    best: FrozenTrial | None
    best_feasible: bool
    first_failure: str | None


def run_study(
    loaded: LoadedStudy,
    progress: StudyProgress | None = None,
    ray_address: str | None = None,
) -> StudySummary:
    """Run ``loaded`` until its budget is spent (or its time limit), with its executor."""
    started = time.time()
    progress = progress or SilentProgress()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    cfg = loaded.config
    check_weights_exist(loaded)
    store = StudyStore(cfg)
    _describe(store.study, loaded)
    from drsearch.annotations import annotate_study, artifact_store

    annotate_study(store.study, loaded)
    store.artifacts = artifact_store(loaded)
    reaped = store.reap_interrupted()
    before = {t.number for t in store.study.get_trials(deepcopy=False)}
    remaining = cfg.budget.n_trials - store.counts().counted
    deadline = started + cfg.budget.time_limit_s if cfg.budget.time_limit_s else None
    if remaining > 0:
        if cfg.executor == "local":
            from drsearch.runners.local import run_local

            run_local(store, loaded, remaining, progress, deadline)
        else:
            from drsearch.runners.ray import ray_session, run_ray

            with ray_session(ray_address or cfg.ray.address):
                run_ray(store, loaded, remaining, progress, deadline)
    trials = store.study.get_trials(deepcopy=False)
    ours = [t for t in trials if t.number not in before]
    return StudySummary(
        name=cfg.name,
        storage=masked_url(cfg.storage_url()),
        counts=store.counts(),
        n_trials=cfg.budget.n_trials,
        reaped=reaped,
        started_trials=len(ours),
        wall_seconds=time.time() - started,
        trial_seconds=sum(float(t.user_attrs.get("wall_seconds") or 0) for t in ours),
        best=_best(store.study),
        best_feasible=_best_is_feasible(store.study),
        first_failure=_first_failure(trials),
    )


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


def _best(study: optuna.Study) -> FrozenTrial | None:
    try:
        return study.best_trial
    except ValueError:  # nothing complete, or (constrained) nothing feasible
        complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
        return max(complete, key=lambda t: t.value or float("-inf")) if complete else None


def _best_is_feasible(study: optuna.Study) -> bool:
    try:
        return all(v <= 0 for v in study.best_trial.constraints.values())
    except ValueError:
        return False


def _first_failure(trials: list[FrozenTrial]) -> str | None:
    for t in trials:
        reason = t.user_attrs.get("fail_reason")
        if t.state == TrialState.FAIL and reason and reason != INTERRUPTED:
            return f"trial {t.number}: {reason}"
    return None
