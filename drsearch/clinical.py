"""The medical rules, in one place: grades, the thresholds a DR grader is held to, and the
medical-grade checklist.

The objective a study ranks by (its primary metric minus a penalty when a constraint fails,
``objective_score``) lives here too, so the trainer and the search score an epoch alike.

The ICDR grades are 0 none, 1 mild, 2 moderate, 3 severe NPDR and 4 PDR. A study's default
constraints and the report's checklist use the same thresholds: severe NPDR sensitivity
>= 0.90, PDR sensitivity >= 0.95, every per-grade specificity >= 0.90 (> 0.90 in the
checklist), overall accuracy >= 0.90, and validation accuracy varying by less than 5 points
over the last 3 epochs; each with its Wilson 95% lower bound where it is a proportion.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

GRADES = ("none", "mild", "moderate", "severe_npdr", "pdr")
NUM_CLASSES = len(GRADES)

ACCURACY_MIN = 0.90
SEVERE_NPDR_SENSITIVITY_MIN = 0.90
PDR_SENSITIVITY_MIN = 0.95
SPECIFICITY_MIN = 0.90
#: Validation accuracy may vary by less than this many points over the last epochs.
STABILITY_POINTS = 5.0
STABLE_EPOCHS = 3
#: ``diagnose`` flags a severe grade whose sensitivity lies this far below overall accuracy.
MEDICAL_GAP = 0.30

#: The binary endpoints a DR screen is judged on: positive when the grade is at least this.
#: Referable DR is moderate NPDR or worse; vision-threatening DR is severe NPDR or PDR.
ENDPOINTS = {"referable": 2, "vision_threatening": 3}
#: ``drsearch evaluate``'s operating point: the threshold on P(grade >= k) chosen on
#: validation for this sensitivity (Gulshan et al. 2016's high-sensitivity point: 97.5%).
TARGET_SENSITIVITY = 0.975
#: Confidence level of every interval ``evaluate`` reports.
CONFIDENCE = 0.95

#: A study's constraints when its file names none: ``(metric, min)``.
DEFAULT_CONSTRAINTS = (
    ("sensitivity_severe_npdr", SEVERE_NPDR_SENSITIVITY_MIN),
    ("sensitivity_pdr", PDR_SENSITIVITY_MIN),
    ("min_specificity", SPECIFICITY_MIN),
)

#: Validation metrics a study may optimise (all "higher is better") and their value ranges.
PRIMARY_METRIC_RANGES = {
    "accuracy": (0.0, 1.0),
    "balanced_accuracy": (0.0, 1.0),
    "qwk": (-1.0, 1.0),
    "macro_f1": (0.0, 1.0),
    "referable_auc": (0.0, 1.0),
}


def constraint_name(metric: str, minimum: float) -> str:
    """How a constraint is named in records: ``sensitivity_pdr>=0.95``."""
    return f"{metric}>={minimum:g}"


@dataclass
class Score:
    """The medical-grade objective of one epoch's validation metrics.

    ``primary`` is the study's metric. Each constraint ``metric >= min`` has a shortfall
    ``max(0, min - metric)`` (an undefined metric, e.g. a grade absent from validation,
    counts as 0). A feasible epoch scores ``primary``; an infeasible one scores
    ``primary - (R + sum of shortfalls)``, where ``R`` is the width of the primary metric's
    range (1, or 2 for QWK). So every infeasible result ranks below every feasible one, and
    among infeasible ones the smaller total shortfall ranks higher. Constraint values
    ``min - metric`` are also stored for Optuna (feasible when all are <= 0).
    """

    value: float
    primary: float
    constraints: dict[str, float]  # name -> min - metric; feasible when all <= 0
    shortfalls: dict[str, float]
    feasible: bool


def objective_score(
    metric: str, constraints: list[tuple[str, float]], metrics: dict[str, Any]
) -> Score:
    """The objective (``Score``) of ``metrics`` for a primary ``metric`` and constraints
    given as ``(metric, min)`` pairs."""
    low, high = PRIMARY_METRIC_RANGES[metric]
    raw = metrics.get(metric)
    primary = low if raw is None or math.isnan(raw) else float(raw)
    bounds, shortfalls = {}, {}
    for name, minimum in constraints:
        value = metrics.get(name)
        observed = 0.0 if value is None else float(value)
        key = constraint_name(name, minimum)
        bounds[key] = minimum - observed
        shortfalls[key] = max(0.0, minimum - observed)
    feasible = all(v <= 0 for v in bounds.values())
    value = primary if feasible else primary - ((high - low) + sum(shortfalls.values()))
    return Score(value, primary, bounds, shortfalls, feasible)


#: z for a two-sided 95% interval.
Z95 = 1.959963984540054


def wilson_interval(successes: int, n: int, z: float = Z95) -> tuple[float, float] | None:
    """The Wilson score interval of a proportion (95% by default); ``None`` when ``n`` is 0."""
    if n == 0:
        return None
    p = successes / n
    centre = p + z * z / (2 * n)
    margin = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    scale = 1 + z * z / n
    return max(0.0, (centre - margin) / scale), min(1.0, (centre + margin) / scale)


def wilson_lower(successes: int, n: int, z: float = Z95) -> float | None:
    """Lower end of the Wilson score interval for a proportion (95% by default)."""
    interval = wilson_interval(successes, n, z)
    return None if interval is None else interval[0]


@dataclass
class CheckItem:
    name: str
    observed: float | None
    threshold: str
    passed: bool
    wilson_lower: float | None = None
    detail: str = ""
    unit: str = ""  # of ``observed`` where it is not a proportion


def checklist(
    a: dict[str, Any], log: list[dict[str, Any]], side: str = "validation"
) -> list[CheckItem]:
    """The medical-grade checklist of a trial's best-epoch metrics ``a`` (measured on
    ``side``: validation, or the held-out test set) and its epoch log (stability is always
    judged on the validation epochs)."""
    support = a.get("support") or []
    n = int(sum(support)) if support else 0
    lower = a.get("sensitivity_wilson_lower") or [None] * 5
    acc = a.get("accuracy")
    items = [
        CheckItem(
            "overall accuracy",
            acc,
            f">= {ACCURACY_MIN:.2f}",
            _ge(acc, ACCURACY_MIN),
            wilson_lower(round(acc * n), n) if acc is not None and n else None,
            f"{n} {side} images",
        ),
        _sensitivity_item(
            "severe NPDR sensitivity (grade 3)", a, 3, SEVERE_NPDR_SENSITIVITY_MIN, lower, side
        ),
        _sensitivity_item("PDR sensitivity (grade 4)", a, 4, PDR_SENSITIVITY_MIN, lower, side),
    ]
    spec = [s for s in a.get("specificity") or [] if s is not None]
    worst = min(spec) if spec else None
    items.append(
        CheckItem(
            "every per-grade specificity",
            worst,
            f"> {SPECIFICITY_MIN:.2f}",
            worst is not None and worst > SPECIFICITY_MIN,
            detail="lowest: grade " + str((a.get("specificity") or []).index(worst))
            if spec
            else "",
        )
    )
    items.append(_stability(log))
    return items


def _sensitivity_item(
    name: str, a: dict[str, Any], grade: int, threshold: float, lower: list[Any], side: str
) -> CheckItem:
    sens = (a.get("sensitivity") or [None] * 5)[grade]
    support = (a.get("support") or [0] * 5)[grade]
    return CheckItem(
        name,
        sens,
        f">= {threshold:.2f}",
        _ge(sens, threshold),
        lower[grade],
        f"{support} {side} images of grade {grade}",
    )


def _stability(log: list[dict[str, Any]]) -> CheckItem:
    accs = [
        r["val"]["accuracy"] for r in log[-STABLE_EPOCHS:] if r["val"].get("accuracy") is not None
    ]
    over = f"the last {len(accs)} epochs" if len(accs) >= 2 else "the last epochs"
    return _accuracy_spread(
        "stable convergence", accs, f"< {STABILITY_POINTS:g} points over {over}",
        "not enough epochs logged", "validation accuracy ",
    )  # fmt: skip


def seed_variation(accuracies: list[float]) -> CheckItem:
    """The "< 5 points" stability item judged across retrainings with different seeds
    (``drsearch confirm``): max - min validation accuracy of the seeds' best epochs."""
    return _accuracy_spread(
        "stable across seeds", accuracies, f"< {STABILITY_POINTS:g} points across seeds",
        "fewer than 2 seeds", f"validation accuracy over {len(accuracies)} seeds: ",
    )  # fmt: skip


def _accuracy_spread(
    name: str, accs: list[float], rule: str, too_few: str, detail: str
) -> CheckItem:
    """The "< 5 points" rule on validation accuracies: max - min, in points."""
    if len(accs) < 2:
        return CheckItem(name, None, rule, False, detail=too_few)
    spread = (max(accs) - min(accs)) * 100
    return CheckItem(
        name,
        spread,
        rule,
        spread < STABILITY_POINTS,
        detail=detail + ", ".join(f"{x:.3f}" for x in accs),
        unit="points (max - min accuracy, %)",
    )


def _ge(value: float | None, threshold: float) -> bool:
    return value is not None and value >= threshold
