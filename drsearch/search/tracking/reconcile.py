"""Making tracked runs equal to the study: the one path every end, pause and repair takes.

For every trial the study has ended or paused, its run should say what the study says
(``common.target``: COMPLETE, PRUNED, FAIL as ``drsearch.state`` with status FINISHED,
FINISHED, FAILED; an interrupted trial KILLED; a paused one PAUSED and RUNNING), hold every
epoch of its ``metrics.jsonl`` once, its end fields and files; the study's run is FINISHED
when no trial runs or waits at a rung. Trials that run are their runner's to track.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from drsearch.search.tracking.common import (
    ARTIFACTS,
    Backend,
    origin_tags,
    paused_attrs,
    read_epochs,
    run_folder,
    shown_params,
    target,
    trial_end_fields,
)


@dataclass
class Fix:
    """One run brought in line with the study (``number`` ``None``: the study's run)."""

    number: int | None
    was: str
    now: str
    epochs: int = 0

    def __str__(self) -> str:
        if self.number is None:
            return f"study run {self.was} -> {self.now}"
        logged = f", {self.epochs} epoch(s) logged" if self.epochs else ""
        return f"trial {self.number}: {self.was} -> {self.now}{logged}"


def study_trial(study: Any, number: int) -> Any:
    """One trial of an Optuna study, as stored now."""
    storage, study_id = study._storage, study._study_id
    return storage.get_trial(storage.get_trial_id_from_study_id_trial_number(study_id, number))


def end_ms(trial: Any) -> int | None:
    done = trial.datetime_complete
    return int(done.timestamp() * 1000) if done is not None else None


def trial_files(folder: Path | None) -> list[Path]:
    if folder is None:
        return []
    return [folder / name for name in ARTIFACTS if (folder / name).is_file()]


def bring(
    backend: Backend, trial: Any, got: tuple[str, str] | None, folder: Path | None, force: bool
) -> Fix | None:
    """Make one trial's run what the study says (``got``: what the run says, ``None`` when
    it has none or that is not known: it is found by its tags, or made). ``force``: end (or
    pause) it even when it already says so; otherwise only the epochs it lacks are logged."""
    want = target(trial)
    if want is None:
        return None
    number = trial.number
    if got is None:
        tags = origin_tags(paused_attrs(trial))
        backend.trial_run(number, shown_params(trial.params), tags, running=False)
    rows = read_epochs(folder, backend.last_epoch(number))
    if got == want and not rows and not force:
        return None
    for epoch, metrics in rows:
        backend.log_epoch(number, epoch, metrics)
    if want[0] == "PAUSED":
        backend.pause(number)
    else:
        metrics, tags = trial_end_fields(trial)
        backend.end_trial(number, want[1], metrics, tags, trial_files(folder), end_ms(trial))
    was = "no run" if got is None else "/".join(got)
    return Fix(number, was, "/".join(want), len(rows))


def reconcile(
    backend: Backend,
    trials: list[Any],
    deep: bool,
    run_dir: Callable[[int], Path] | None = None,
) -> list[Fix]:
    """Every ended or paused trial's run made equal to the study; ``deep``: also the runs
    that already say so are checked for missing epochs (writes were lost). Then the study's
    run: RUNNING while a trial runs or waits at a rung, else FINISHED. What it fixed."""
    have = backend.tracked()
    fixes: list[Fix] = []
    for trial in trials:
        want = target(trial)
        got = have.get(trial.number)
        if want is None or (got == want and not deep):
            continue
        folder = run_folder(trial) or (run_dir(trial.number) if run_dir else None)
        fix = bring(backend, trial, got, folder, force=False)
        if fix is not None:
            fixes.append(fix)
    running = any(t.state.name == "RUNNING" for t in trials)
    if backend.study_status(running):
        now = "RUNNING" if running else "FINISHED"
        fixes.append(Fix(None, "FINISHED" if running else "RUNNING", now))
    return fixes
