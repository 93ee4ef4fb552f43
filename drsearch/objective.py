"""The one place where the search layer meets the trainer, shared by every executor.

A trial runs ``execute_trial`` (in-process or inside a Ray worker), which calls ``fit`` and
turns each epoch into a plain payload. The executor feeds the payloads to a ``TrialTracker``,
which turns them into what the Optuna study records: intermediate values, a final state, the
objective value, constraints and user attributes.

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

import math
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

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


Emit = Callable[[dict[str, Any]], None]


def execute_trial(
    recipe: Recipe,
    run_dir: Path,
    emit: Emit,
    pruning_metric: str,
    resume: bool = False,
) -> dict[str, Any]:
    """Train one trial, emitting a payload per epoch; return the final payload.

    The final payload has ``drsearch_done`` (trained to the end or early-stopped) or
    ``drsearch_failed`` with a one-line reason. ``PruneSignal`` propagates.
    """
    started = time.perf_counter()
    state: dict[str, Any] = {"best": None, "last": None}

    def reporter(epoch: int, record: dict[str, Any]) -> None:
        if record["best_epoch"] == record["epoch"] or state["best"] is None:
            state["best"] = record
        payload = epoch_payload(record, state["best"], pruning_metric, started)
        state["last"] = payload
        emit(payload)

    try:
        fit(recipe, reporter, run_dir=run_dir, resume=resume)
    except PruneSignal:
        raise
    except DrsearchError as exc:
        return _failed(state["last"], str(exc))
    except Exception as exc:  # noqa: BLE001 - recorded as the trial's failure reason
        where = traceback.extract_tb(exc.__traceback__)[-1]
        return _failed(
            state["last"], f"{type(exc).__name__}: {exc} ({where.filename}:{where.lineno})"
        )
    final = dict(state["last"] or {})
    final["drsearch_done"] = True
    final["wall_seconds"] = time.perf_counter() - started
    return final


def _failed(last: dict[str, Any] | None, reason: str) -> dict[str, Any]:
    # "epoch" and "value" stay present: Ray Tune rejects results without its metric
    payload = dict(last or {"epoch": 0, "value": float("nan")})
    payload["drsearch_failed"] = reason.splitlines()[0] if reason else "unknown error"
    return payload


def epoch_payload(
    record: dict[str, Any], best: dict[str, Any], pruning_metric: str, started: float
) -> dict[str, Any]:
    """What one finished epoch tells the search layer (flat, JSON-able)."""
    value = record["val"].get(pruning_metric)
    low = PRIMARY_METRICS.get(pruning_metric, (0.0, 1.0))[0]
    return {
        "epoch": record["epoch"],
        "value": low if value is None or math.isnan(value) else float(value),
        "best_epoch": best["epoch"],
        "best": {k: best["val"].get(k) for k in REPORTED_METRICS},
        "lr_groups": record["lr"],
        "train_loss": record["train"]["loss"],
        "trainable_params": record.get("trainable_params"),
        "wall_seconds": time.perf_counter() - started,
    }


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
    """Turns one trial's payloads into intermediate values and a final ``Outcome``."""

    def __init__(self, objective: ObjectiveConfig, max_epochs: int, run_dir: Path) -> None:
        self.objective = objective
        self.max_epochs = max_epochs
        self.run_dir = run_dir
        self.last: dict[str, Any] | None = None
        self.intermediate: dict[int, float] = {}

    def on_epoch(self, payload: dict[str, Any]) -> tuple[int, float] | None:
        """Remember an epoch payload; return ``(step, value)`` to record, if it is one."""
        if not payload.get("epoch") or "value" not in payload or "best" not in payload:
            return None
        self.last = payload
        step, value = int(payload["epoch"]), float(payload["value"])
        self.intermediate[step] = value
        return step, value

    def outcome(self, final: dict[str, Any] | None, stopped_by_scheduler: bool) -> Outcome:
        """The trial's end: failed, completed (incl. early stopping), or pruned."""
        payload = final or self.last or {}
        if final is not None and "epoch" in final and not final.get("drsearch_failed"):
            self.on_epoch(final)
        attrs = self._attrs(payload)
        if payload.get("drsearch_failed") or not payload.get("best"):
            reason = payload.get("drsearch_failed") or "the trial ended without any epoch"
            return Outcome("FAIL", None, attrs | {"fail_reason": reason})
        s = score(self.objective, payload["best"])
        attrs |= {
            "objective_primary": s.primary,
            "feasible": s.feasible,
            "constraint_shortfalls": s.shortfalls,
        }
        epochs = int(payload["epoch"])
        if payload.get("drsearch_done") or (not stopped_by_scheduler) or epochs >= self.max_epochs:
            return Outcome("COMPLETE", s.value, attrs, s.constraints)
        return Outcome("PRUNED", None, attrs | {"pruned_at_epoch": epochs}, s.constraints)

    def _attrs(self, payload: dict[str, Any]) -> dict[str, Any]:
        attrs: dict[str, Any] = dict(payload.get("best") or {})
        attrs |= {
            "epochs_completed": int(payload.get("epoch", 0)),
            "best_epoch": payload.get("best_epoch"),
            "wall_seconds": payload.get("wall_seconds"),
            "run_dir": str(self.run_dir),
            "lr_groups": payload.get("lr_groups"),
            "trainable_params": payload.get("trainable_params"),
        }
        if payload.get("ray_node_id"):
            attrs["ray_node_id"] = payload["ray_node_id"]
        return attrs
