"""Where the search layer meets the trainer: one trial, run in-process or in a Ray worker.

``execute_trial`` calls ``fit`` with a reporter that turns each epoch record into an
``EpochReport`` for the executor's ``emit``; it returns how the run ended (``TrialEnd``)."""

from __future__ import annotations

import math
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

from drsearch.config.recipe import Recipe
from drsearch.config.study import CONSTRAINT_METRICS, PRIMARY_METRICS
from drsearch.errors import DrsearchError
from drsearch.search.trial import EpochReport, TrialEnd
from drsearch.train import fit

#: Best-epoch metrics copied into every payload and, from there, into user attributes: every
#: metric a study may rank or constrain by, and the per-grade figures behind them.
REPORTED_METRICS = tuple(
    dict.fromkeys(
        (
            *PRIMARY_METRICS,
            *CONSTRAINT_METRICS,
            "sensitivity",
            "specificity",
            "sensitivity_wilson_lower",
            "precision",
            "referred",
            "confusion_matrix",
            "support",
            "thresholds",  # a regression or ordinal head's grade cuts at that epoch
        )
    )
)


class PruneSignal(Exception):  # noqa: N818 - a signal, not an error
    """Raised by an in-process executor's reporter to stop a trial the pruner dropped."""


Emit = Callable[[EpochReport], None]


def execute_trial(
    recipe: Recipe,
    run_dir: Path,
    emit: Emit,
    pruning_metric: str,
    resume: bool = False,
) -> TrialEnd:
    """Train one trial, emitting a report per epoch (on a resume, first the epochs already
    done); return how it ended. ``PruneSignal`` raised by ``emit`` propagates."""
    started = time.perf_counter()

    def reporter(epoch: int, record: dict[str, Any]) -> None:
        emit(epoch_report(record, pruning_metric))

    try:
        fit(recipe, reporter, run_dir=run_dir, resume=resume)
    except PruneSignal:
        raise
    except DrsearchError as exc:
        return TrialEnd("failed", _one_line(str(exc)), time.perf_counter() - started)
    except Exception as exc:  # noqa: BLE001 - recorded as the trial's failure reason
        where = traceback.extract_tb(exc.__traceback__)[-1]
        reason = f"{type(exc).__name__}: {exc} ({where.filename}:{where.lineno})"
        return TrialEnd("failed", _one_line(reason), time.perf_counter() - started)
    return TrialEnd("finished", None, time.perf_counter() - started)


def _one_line(reason: str) -> str:
    return reason.splitlines()[0] if reason.strip() else "unknown error"


def epoch_report(record: dict[str, Any], pruning_metric: str) -> EpochReport:
    """What one epoch record of the trainer tells the search layer."""
    value = record["val"].get(pruning_metric)
    low = PRIMARY_METRICS.get(pruning_metric, (0.0, 1.0))[0]
    return EpochReport(
        epoch=int(record["epoch"]),
        value=low if value is None or math.isnan(value) else float(value),
        best_epoch=int(record["best_epoch"]),
        metrics={k: record["val"].get(k) for k in REPORTED_METRICS},
        lr_groups=record["lr"],
        train_loss=record["train"]["loss"],
        epoch_seconds=float(record.get("epoch_seconds") or 0.0),
        trainable_params=record.get("trainable_params"),
        replayed=bool(record.get("replayed")),
    )
