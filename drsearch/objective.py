"""The one place where the search layer meets the trainer, shared by every executor.

A trial runs ``execute_trial`` (in-process or inside a Ray worker), which calls ``fit`` and
turns each epoch into an ``EpochReport``. The executor feeds the reports to the trial's
``TrialTracker``, the one place that decides what the Optuna study records: intermediate
values, the final state, the best epoch, the objective value, constraints and user attributes.

Medical-grade objective
-----------------------
``primary`` is the study's metric on the trial's best epoch (by the recipe's
``train.monitor``). Each constraint ``metric >= min`` has a shortfall
``max(0, min - metric)`` (an undefined metric, e.g. a grade absent from validation, counts as
0). A feasible trial scores ``primary``; an infeasible one scores
``primary - (R + sum of shortfalls)``, where ``R`` is the width of the primary metric's range
(1, or 2 for QWK). So every infeasible trial ranks below every feasible one, and among
infeasible trials the smaller total shortfall ranks higher. Constraint values
``min - metric`` are also stored for Optuna (feasible when all are <= 0).
"""

from __future__ import annotations

import json
import math
import time
import traceback
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

from drsearch.config.recipe import Recipe
from drsearch.config.study import PRIMARY_METRICS, ObjectiveConfig
from drsearch.errors import DrsearchError
from drsearch.train import fit

#: Best-epoch metrics copied into every payload and, from there, into user attributes.
REPORTED_METRICS = (
    "accuracy",
    "balanced_accuracy",
    "qwk",
    "macro_f1",
    "sensitivity",
    "specificity",
    "sensitivity_wilson_lower",
    "sensitivity_severe_npdr",
    "sensitivity_pdr",
    "min_specificity",
    "referable_sensitivity",
    "referable_specificity",
    "referable_auc",
    "vtdr_sensitivity",
    "vtdr_specificity",
    "confusion_matrix",
    "support",
)


class PruneSignal(Exception):  # noqa: N818 - a signal, not an error
    """Raised by an in-process executor's reporter to stop a trial the pruner dropped."""


@dataclass
class EpochReport:
    """What one finished epoch tells the search layer; plain JSON, so it crosses Ray."""

    epoch: int
    value: float  # the pruning metric; undefined counts as the low end of its range
    best_epoch: int  # the trainer's best epoch so far (by the recipe's train.monitor)
    metrics: dict[str, Any]  # REPORTED_METRICS of this epoch
    lr_groups: dict[str, float]
    train_loss: float
    epoch_seconds: float
    trainable_params: int | None = None
    replayed: bool = False  # restored from the run folder on a resume, not trained now


@dataclass
class TrialEnd:
    """How the trainer's run of a trial ended."""

    status: Literal["finished", "failed"]  # finished: all epochs, or early stopping
    reason: str | None = None
    wall_seconds: float = 0.0


Message = EpochReport | TrialEnd
Emit = Callable[[EpochReport], None]


def to_message(item: Message) -> dict[str, Any]:
    """A report as a flat result dict for Ray Tune (``epoch`` and ``value`` always present)."""
    if isinstance(item, EpochReport):
        head = {"kind": "epoch", "epoch": item.epoch, "value": item.value}
    else:
        head = {"kind": "end", "epoch": 0, "value": float("nan")}
    return head | {"drsearch": json.dumps(asdict(item))}


def from_message(result: dict[str, Any] | None) -> Message | None:
    """The report inside a Ray result, or ``None`` for anything else."""
    if not result or "drsearch" not in result:
        return None
    data = json.loads(result["drsearch"])
    return EpochReport(**data) if result.get("kind") == "epoch" else TrialEnd(**data)


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


@dataclass
class Score:
    """The objective of one trial."""

    value: float
    primary: float
    constraints: dict[str, float]  # name -> min - metric; feasible when all <= 0
    shortfalls: dict[str, float]
    feasible: bool


def score(objective: ObjectiveConfig, metrics: dict[str, Any]) -> Score:
    """Primary metric minus the documented penalty (module docstring)."""
    low, high = PRIMARY_METRICS[objective.metric]
    raw = metrics.get(objective.metric)
    primary = low if raw is None or math.isnan(raw) else float(raw)
    constraints, shortfalls = {}, {}
    for c in objective.constraints:
        value = constraint_metric(metrics, c.metric)
        observed = 0.0 if value is None else value
        constraints[c.name] = c.min - observed
        shortfalls[c.name] = max(0.0, c.min - observed)
    feasible = all(v <= 0 for v in constraints.values())
    value = primary if feasible else primary - ((high - low) + sum(shortfalls.values()))
    return Score(value, primary, constraints, shortfalls, feasible)


def constraint_metric(metrics: dict[str, Any], name: str) -> float | None:
    """A constraint's metric from best-epoch metrics (``min_sensitivity`` is derived)."""
    if name == "min_sensitivity":
        present = [s for s in metrics.get("sensitivity") or [] if s is not None]
        return min(present) if present else None
    value = metrics.get(name)
    return None if value is None else float(value)


@dataclass
class Outcome:
    """How a trial ended, ready to be written to the study."""

    state: str  # "COMPLETE", "PRUNED" or "FAIL"
    value: float | None
    user_attrs: dict[str, Any]
    constraints: dict[str, float] = field(default_factory=dict)


class TrialTracker:
    """One trial's curve, and the one rule for its state, best epoch and value.

    Every executor feeds it the epoch reports it receives (repeats and replays after a resume
    are idempotent) and asks it for the outcome once the trial has ended.
    """

    def __init__(self, objective: ObjectiveConfig, max_epochs: int, run_dir: Path) -> None:
        self.objective = objective
        self.max_epochs = max_epochs
        self.run_dir = run_dir
        self.curve: dict[int, EpochReport] = {}

    def on_epoch(self, report: EpochReport) -> bool:
        """Remember an epoch; ``True`` when it was not known yet."""
        new = report.epoch not in self.curve
        self.curve[report.epoch] = report
        return new

    @property
    def intermediate(self) -> dict[int, float]:
        return {e: r.value for e, r in sorted(self.curve.items())}

    @property
    def last(self) -> EpochReport | None:
        return self.curve[max(self.curve)] if self.curve else None

    def outcome(self, end: TrialEnd | None, pruned: bool = False) -> Outcome:
        """COMPLETE (all epochs, early stopping, or ``max_epochs`` reached), PRUNED (stopped
        by the pruner before ``max_epochs``) or FAIL (with the reason)."""
        last = self.last
        attrs = self._attrs(end)
        if end is not None and end.status == "failed":
            return Outcome("FAIL", None, attrs | {"fail_reason": end.reason or "unknown error"})
        if last is None:
            reason = "the trial ended without reporting an epoch"
            return Outcome("FAIL", None, attrs | {"fail_reason": reason})
        best = self.curve.get(last.best_epoch)
        if best is None:
            reason = f"its best epoch {last.best_epoch} is missing from the reported curve"
            return Outcome("FAIL", None, attrs | {"fail_reason": reason})
        s = score(self.objective, best.metrics)
        attrs |= {
            "objective_primary": s.primary,
            "feasible": s.feasible,
            "constraint_shortfalls": s.shortfalls,
        }
        finished = end is not None and end.status == "finished"
        if finished or last.epoch >= self.max_epochs:
            return Outcome("COMPLETE", s.value, attrs, s.constraints)
        if pruned:
            return Outcome("PRUNED", None, attrs | {"pruned_at_epoch": last.epoch}, s.constraints)
        reason = f"stopped at epoch {last.epoch} of {self.max_epochs} without finishing"
        return Outcome("FAIL", None, attrs | {"fail_reason": reason})

    def _attrs(self, end: TrialEnd | None) -> dict[str, Any]:
        last = self.last
        attrs: dict[str, Any] = {"run_dir": str(self.run_dir)}
        if last is None:
            return attrs | {"epochs_completed": 0}
        best = self.curve.get(last.best_epoch)
        attrs |= dict(best.metrics) if best is not None else {}
        return attrs | {
            "epochs_completed": last.epoch,
            "best_epoch": last.best_epoch,
            "wall_seconds": end.wall_seconds if end is not None and end.wall_seconds else None,
            "train_seconds": sum(r.epoch_seconds for r in self.curve.values()),
            "lr_groups": last.lr_groups,
            "trainable_params": last.trainable_params,
        }
