"""What both executors do around a trial: claim it, build its recipe, decide after each epoch,
record its end. Both call the same functions, so the same curve gets the same decisions."""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any, Protocol

import optuna

from drsearch.config.space import trial_recipe
from drsearch.config.study import LoadedStudy
from drsearch.errors import ConfigError
from drsearch.search.deadline import Deadline
from drsearch.search.draws import draw
from drsearch.search.scheduler import Decision, RungScheduler
from drsearch.search.store import RECOVERED, RETRY_OF, STORED, StudyStore
from drsearch.search.trial import EpochReport, Outcome, TrialEnd, TrialTracker


class StudyProgress(Protocol):
    """What a runner tells a progress display (all from the driver's thread)."""

    def trial_started(self, number: int, params: dict[str, Any]) -> None: ...
    def trial_epoch(self, number: int, epoch: int, value: float) -> None: ...
    def trial_finished(self, number: int, outcome: Outcome) -> None: ...
    def trial_paused(self, number: int, epoch: int) -> None: ...
    def warn(self, message: str) -> None: ...


class SilentProgress:
    def trial_started(self, number: int, params: dict[str, Any]) -> None: ...
    def trial_epoch(self, number: int, epoch: int, value: float) -> None: ...
    def trial_finished(self, number: int, outcome: Outcome) -> None: ...
    def trial_paused(self, number: int, epoch: int) -> None: ...
    def warn(self, message: str) -> None: ...


class NoTrial(Enum):
    """``start_trial``'s answer when it started no trial (falsy, unlike a ``TrialContext``)."""

    SPENT = "the study's budget is spent (and nothing is left paused)"
    NOT_STARTED = "the claimed trial could not start: recorded as FAIL with its reason"
    WAIT = "nothing can start now, but a running trial may still make a paused one promotable"

    def __bool__(self) -> bool:
        return False


#: Promotion ASHA: ask again shortly.
WAIT = NoTrial.WAIT


#: What turns a trial's sampled parameters into what its trainable trains (the DR trainer: a
#: validated ``Recipe``; any other trainable: its own config) and the epochs that config
#: plans; raises ``ConfigError`` for an impossible combination (the trial then FAILs).
Configure = Callable[[dict[str, Any], str], "tuple[Any, int]"]


@dataclass
class TrialContext:
    """One claimed trial: its Optuna handle, parameters, recipe (or, for a trainable other
    than the DR trainer, its config), run folder and tracker."""

    trial: optuna.Trial
    params: dict[str, Any]
    recipe: Any  # a Recipe for the DR trainer
    run_dir: Path
    tracker: TrialTracker
    epochs: int = 0  # what its config plans (``pruner.max_epochs`` may stop it before)
    resume: bool = False  # a re-run that continues from the failed trial's checkpoint
    decision: Decision = "continue"
    end: TrialEnd | None = None
    extra_attrs: dict[str, Any] = field(default_factory=dict)
    started: float = field(default_factory=time.time)

    @property
    def number(self) -> int:
        return self.trial.number

    @property
    def trial_id(self) -> int:
        return self.trial._trial_id


def study_runs(loaded: LoadedStudy, store: StudyStore) -> Path:
    """The study's run folders: ``<run_root>/<name>/<study uuid, 8 characters>/``.

    Keyed by the study's identity, so a new study under an old name (another storage, a
    deleted database) never finds the old study's checkpoints in its trial folders."""
    return loaded.config.study_dir / store.uuid[:8]


def trial_dir(loaded: LoadedStudy, store: StudyStore, number: int) -> Path:
    return study_runs(loaded, store) / f"{number:04d}"


def start_trial(
    store: StudyStore,
    loaded: LoadedStudy,
    progress: StudyProgress,
    threads: int | None,
    configure: Configure | None = None,
    deadline: Deadline | None = None,
) -> TrialContext | NoTrial:
    """Claim a trial and build its recipe; ``NoTrial.SPENT`` when the budget is spent,
    ``NoTrial.NOT_STARTED`` when the claimed trial could not start (an impossible
    combination: recorded as FAIL).

    With promotion ASHA, a paused trial that now qualifies is promoted first (resumed from its
    checkpoint); with the budget spent, ``NoTrial.WAIT`` while trials still run, and once none
    does, the trials still paused are pruned and ``NoTrial.SPENT`` is returned. Past the
    run's time limit (``deadline``), nothing starts but the leader of the highest rung, to
    train to the end (``RungScheduler.finish_leader``); then ``NoTrial.SPENT``."""
    rungs = RungScheduler(store, loaded.max_epochs)
    if deadline is not None and deadline.passed():
        promoted = rungs.finish_leader(deadline.fits) if rungs.promotes else None
        if promoted is None:
            return NoTrial.SPENT
        deadline.finished.append(promoted.number)
        trial: optuna.Trial | None = optuna.Trial(store.study, promoted._trial_id)
    else:
        promoted = rungs.promote() if rungs.promotes else None
        trial = optuna.Trial(store.study, promoted._trial_id) if promoted else store.claim()
    draws = 1
    if trial is None:
        if rungs.promotes:
            pruned = rungs.prune_paused()
            if pruned is None:
                return NoTrial.WAIT
            for number, outcome in pruned:
                progress.trial_finished(number, outcome)
        return NoTrial.SPENT
    if deadline is not None:
        deadline.trial_started()  # the limit counts from this run's first trial
    run_dir = trial_dir(loaded, store, trial.number)
    tracker = TrialTracker(loaded.config.objective, loaded.max_epochs, run_dir)
    try:
        if promoted is not None:  # its parameters as drawn, in file order
            params = {k: promoted.params[k] for k in loaded.space if k in promoted.params}
        else:  # never a configuration another trial of the study holds (draws.py)
            params, draws = draw(trial, loaded.space, loaded.recipe)
        progress.trial_started(trial.number, params)
        if configure is not None:
            config, epochs = configure(params, f"trial {trial.number}")
        else:
            recipe = trial_recipe(loaded.recipe, params, f"trial {trial.number}")
    except Exception as exc:  # noqa: BLE001 - sampling or validation: this trial fails, not the run
        progress.trial_started(trial.number, dict(trial.params))
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        if not isinstance(exc, ConfigError):
            reason = f"{type(exc).__name__} while sampling its parameters: {reason}"
        outcome = tracker.outcome(TrialEnd("failed", reason))
        store.finish(trial._trial_id, outcome, {})
        progress.trial_finished(trial.number, outcome)
        return NoTrial.NOT_STARTED
    redrawn = {"draws": draws} if promoted is None and draws > 1 else {}
    if configure is not None:  # another trainable: no recipe, no checkpoint to take over
        ctx = TrialContext(trial, params, config, run_dir, tracker, epochs, resume=bool(promoted))
        ctx.extra_attrs |= redrawn
        if promoted is not None:
            ctx.extra_attrs["promotions"] = int(promoted.user_attrs.get("promotions", 0)) + 1
        return ctx
    if recipe.train.threads is None and threads is not None:
        recipe = recipe.model_copy(
            update={"train": recipe.train.model_copy(update={"threads": threads})}
        )
    if recipe.data.cache == "auto":
        # the decoded, resized images are the same for every trial of the study: decoded once
        # into the disk cache (keyed by content, sizes and preprocessing) and memory-mapped by
        # every other trial instead of decoded again by each
        recipe = recipe.model_copy(
            update={"data": recipe.data.model_copy(update={"cache": "disk"})}
        )
    ctx = TrialContext(trial, params, recipe, run_dir, tracker, recipe.train.epochs)
    ctx.extra_attrs |= redrawn
    if promoted is not None:
        # its checkpoint is the truth: the trainer replays the epochs done, then goes on;
        # its wall time so far counts toward the trial's
        ctx.resume = True
        ctx.started -= float(promoted.user_attrs.get("wall_seconds") or 0.0)
        ctx.extra_attrs["promotions"] = int(promoted.user_attrs.get("promotions", 0)) + 1
        return ctx
    retry_of = trial.user_attrs.get(RETRY_OF)
    if retry_of is not None:
        ctx.resume = _take_over_checkpoint(loaded, store, int(retry_of), ctx)
    return ctx


def _take_over_checkpoint(
    loaded: LoadedStudy, store: StudyStore, old: int, ctx: TrialContext
) -> bool:
    """A re-run continues from the failed trial's checkpoint when that was trained with the
    same recipe (its ``config.yaml``): the old run folder is copied, never moved."""
    source = trial_dir(loaded, store, old)
    last = source / "checkpoints" / "last.pt"
    config = source / "config.yaml"
    if not last.is_file() or not config.is_file():
        return False
    import yaml

    from drsearch.train.resume import resume_changes

    changed = resume_changes(yaml.safe_load(config.read_text()), ctx.recipe.model_dump(mode="json"))
    if changed:
        ctx.extra_attrs["retry_note"] = (
            f"trial {old}'s checkpoint was trained with another recipe ({', '.join(changed)}): "
            "started afresh"
        )
        return False
    if ctx.run_dir.exists():
        return False  # never write over a folder that is already there
    shutil.copytree(source, ctx.run_dir, ignore=shutil.ignore_patterns(".*"))
    ctx.extra_attrs["resumed_from_trial"] = old
    return True


def after_epoch(
    store: StudyStore, ctx: TrialContext, report: EpochReport, progress: StudyProgress
) -> Decision:
    """Record one epoch (idempotent) and let the rung scheduler decide whether the trial
    goes on (``RungScheduler.on_epoch``: continue, stop, prune or pause)."""
    record_epoch(store, ctx, report, progress)
    decision = RungScheduler(store, ctx.tracker.max_epochs).on_epoch(
        ctx.trial_id, ctx.number, report.epoch, report.replayed, ctx.epochs
    )
    if decision != "continue":
        ctx.decision = decision
    return decision


def record_epoch(
    store: StudyStore, ctx: TrialContext, report: EpochReport, progress: StudyProgress
) -> None:
    """Remember an epoch in the trial's curve and the study (each epoch once): the pruning
    value, and what the trial is worth there by the study's objective (BOHB's model fits it)."""
    if ctx.tracker.on_epoch(report):
        value = ctx.tracker.intermediate[report.epoch]
        store.record_epoch(ctx.trial_id, report.epoch, value, ctx.tracker.ranked(report.epoch))
        progress.trial_epoch(ctx.number, report.epoch, report.value)


def finish_trial(store: StudyStore, ctx: TrialContext, progress: StudyProgress) -> Outcome | None:
    """Decide the outcome (one rule for every executor), attach the dashboard note and
    artifacts (Optuna wants them before the tell), then write the study record. A trial
    paused at a rung (promotion ASHA) is left paused, with the outcome it would have as
    pruned there: ``None``."""
    outcome = ctx.tracker.outcome(ctx.end, pruned=ctx.decision in ("prune", "pause"))
    outcome.user_attrs |= ctx.extra_attrs
    # a failed or finished trial is told as such, even when it had been told to pause
    last = ctx.tracker.last if ctx.decision == "pause" and outcome.state == "PRUNED" else None
    promoted = "promotions" in ctx.extra_attrs  # its wall time spans several runs
    if outcome.user_attrs.get("wall_seconds") is None or last is not None or promoted:
        outcome.user_attrs["wall_seconds"] = time.time() - ctx.started
    if last is not None:
        RungScheduler(store, ctx.tracker.max_epochs).pause(ctx.trial_id, last.epoch, outcome)
        progress.trial_paused(ctx.number, last.epoch)
        return None
    done = store.finish(ctx.trial_id, outcome, ctx.tracker.intermediate)
    if done.how == STORED and outcome.user_attrs.get("artifact_error"):
        problem = outcome.user_attrs["artifact_error"]
        progress.warn(f"trial {ctx.number}: its artifacts were not stored ({problem})")
    if done.how == RECOVERED:
        progress.warn(
            f"trial {ctx.number} was marked interrupted while it still trained (its runner "
            f"seemed gone: a lapsed heartbeat?); its result is kept as trial {done.number}"
        )
    progress.trial_finished(ctx.number, outcome)
    return outcome
