"""The medical-grade objective: a trial's value from its best epoch's validation metrics.

``primary`` is the study's metric on the trial's best epoch (by the recipe's
``train.monitor``). Each constraint ``metric >= min`` has a shortfall
``max(0, min - metric)`` (an undefined metric, e.g. a grade absent from validation, counts as
0). A feasible trial scores ``primary``; an infeasible one scores
``primary - (R + sum of shortfalls)``, where ``R`` is the width of the primary metric's range
(1, or 2 for QWK). So every infeasible trial ranks below every feasible one, and among
infeasible trials the smaller total shortfall ranks higher. Constraint values
``min - metric`` are also stored for Optuna (feasible when all are <= 0)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from drsearch.config.study import PRIMARY_METRICS, ObjectiveConfig


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
