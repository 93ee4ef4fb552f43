"""``clinical.objective_score`` for an accuracy primary, on many confusion matrices at once.

The search stage scores every configuration of every simulated study (tens of thousands of
matrices a table); this is the same arithmetic as ``clinical.judge`` and ``objective_score``
for constraints on single proportions (every default constraint and the exact-grade
sensitivities), checked equal to them in ``tests/test_bench_selection.py``. The finalist
stages call the project's own ``objective_score``.
"""

from __future__ import annotations

import numpy as np

from drsearch.clinical import PENALTY_PER_SE, one_sided_z

_GRADE = {"severe_npdr": 3, "pdr": 4}
_BINARY = {"referable": 2, "vtdr": 3}


def metric_counts(metric: str, cm: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(successes, n) of a single-proportion metric on ``cm`` (..., 5, 5), rows true grades."""
    if metric == "accuracy":
        return np.trace(cm, axis1=-2, axis2=-1), cm.sum(axis=(-2, -1))
    kind, _, what = metric.partition("_")
    if kind in ("sensitivity", "referred") and what in _GRADE:
        g = _GRADE[what]
        hit = cm[..., g, g] if kind == "sensitivity" else cm[..., g, 2:].sum(axis=-1)
        return hit, cm[..., g, :].sum(axis=-1)
    if kind in _BINARY and what in ("sensitivity", "specificity"):
        k = _BINARY[kind]
        part = slice(k, 5) if what == "sensitivity" else slice(0, k)
        return cm[..., part, part].sum(axis=(-2, -1)), cm[..., part, :].sum(axis=(-2, -1))
    raise ValueError(f"{metric}: not a single-proportion metric this scorer knows")


def metric_rates(metric: str, cm: np.ndarray) -> np.ndarray:
    x, n = metric_counts(metric, cm)
    return x / np.where(n > 0, n, np.nan)


def objective(
    cm: np.ndarray,
    constraints: tuple[tuple[str, float], ...],
    rule: str = "lower_bound",
    confidence: float = 0.90,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(value, primary accuracy, feasible) of every matrix in ``cm`` (..., 5, 5), as
    ``objective_score("accuracy", constraints, ..., rule, confidence)`` gives them."""
    cm = np.asarray(cm, dtype=float)
    x, total = metric_counts("accuracy", cm)
    primary = x / total
    z_req = 0.0 if rule == "point" else one_sided_z(confidence)
    short = np.zeros_like(primary)
    feasible = np.ones(primary.shape, dtype=bool)
    for metric, minimum in constraints:
        x, n = metric_counts(metric, cm)
        defined = n > 0
        safe = np.where(defined, n, 1.0)
        var = np.maximum(minimum * (1 - minimum), 0.25 / (safe * safe)) / safe
        z = np.where(defined, (x / safe - minimum) / np.sqrt(var), -minimum / np.sqrt(
            max(minimum * (1 - minimum), 0.25)))  # fmt: skip
        met = defined & (z >= z_req - 1e-12)
        short += np.where(met, 0.0, np.maximum(z_req - z, 1e-9))
        feasible &= met
    trivial = cm.sum(axis=-1).max(axis=-1) / total
    beats = primary > trivial
    value = primary - PENALTY_PER_SE * short - np.where(beats, 0.0, trivial - primary)
    return value, primary, feasible & beats


def truth(rows: np.ndarray, counts: np.ndarray, constraints) -> tuple[np.ndarray, np.ndarray]:  # noqa: ANN001
    """(accuracy, feasible) of models with ``rows`` at the proportions of ``counts``: every
    constraint met by its expected value and the trivial model beaten."""
    _, acc, ok = objective(rows * counts[..., :, None], constraints, "point")
    return acc, ok
