"""What both executors do around a trial: ask the study, build the recipe, record the end."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import optuna

from drsearch.config.recipe import Recipe
from drsearch.errors import ConfigError
from drsearch.objective import Outcome, TrialTracker
from drsearch.search_space import sample, trial_recipe
from drsearch.storage import StudyStore
from drsearch.study import LoadedStudy


class StudyProgress(Protocol):
    """What a runner tells a progress display (all from the driver's thread)."""

    def trial_started(self, number: int, params: dict[str, Any]) -> None: ...
    def trial_epoch(self, number: int, epoch: int, value: float) -> None: ...
    def trial_finished(self, number: int, outcome: Outcome) -> None: ...


class SilentProgress:
    def trial_started(self, number: int, params: dict[str, Any]) -> None: ...
    def trial_epoch(self, number: int, epoch: int, value: float) -> None: ...
    def trial_finished(self, number: int, outcome: Outcome) -> None: ...


@dataclass
class TrialContext:
    """One asked trial: its Optuna handle, parameters, recipe, run folder and tracker."""

    trial: optuna.Trial
    params: dict[str, Any]
    recipe: Recipe
    run_dir: Path
    tracker: TrialTracker

    @property
    def number(self) -> int:
        return self.trial.number

    @property
    def trial_id(self) -> int:
        return self.trial._trial_id


def trial_dir(loaded: LoadedStudy, number: int) -> Path:
    return (loaded.config.study_dir / "trials" / f"{number:04d}").resolve()


def start_trial(
    store: StudyStore, loaded: LoadedStudy, progress: StudyProgress, threads: int | None
) -> TrialContext | None:
    """Ask for a trial and build its recipe; an impossible combination fails the trial."""
    trial = store.ask()
    params = sample(trial, loaded.space, loaded.recipe)
    run_dir = trial_dir(loaded, trial.number)
    tracker = TrialTracker(loaded.config.objective, loaded.max_epochs, run_dir)
    progress.trial_started(trial.number, params)
    try:
        recipe = trial_recipe(loaded.recipe, params, f"trial {trial.number}")
    except ConfigError as exc:
        outcome = tracker.outcome({"drsearch_failed": str(exc)}, stopped_by_scheduler=False)
        store.finish(trial._trial_id, outcome, {})
        progress.trial_finished(trial.number, outcome)
        return None
    if recipe.train.threads is None and threads is not None:
        recipe = recipe.model_copy(
            update={"train": recipe.train.model_copy(update={"threads": threads})}
        )
    return TrialContext(trial, params, recipe, run_dir, tracker)


def record_epoch(
    store: StudyStore, ctx: TrialContext, payload: dict[str, Any], progress: StudyProgress
) -> None:
    """Record one epoch payload's intermediate value (idempotent)."""
    step_value = ctx.tracker.on_epoch(payload)
    if step_value is not None:
        store.record_epoch(ctx.trial_id, *step_value)
        progress.trial_epoch(ctx.number, *step_value)


def finish_trial(
    store: StudyStore,
    ctx: TrialContext,
    outcome: Outcome,
    progress: StudyProgress,
    extra_attrs: dict[str, Any] | None = None,
) -> None:
    """Note and artifacts first (Optuna wants them before the tell), then the study record."""
    if extra_attrs:
        outcome.user_attrs |= extra_attrs
    if store.artifacts is not None and not store.is_finished(ctx.trial_id):
        from drsearch.annotations import annotate_trial

        annotate_trial(ctx.trial, outcome, store.artifacts)
    store.finish(ctx.trial_id, outcome, ctx.tracker.intermediate)
    progress.trial_finished(ctx.number, outcome)
