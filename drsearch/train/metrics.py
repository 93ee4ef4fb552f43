"""Validation metrics for 5-grade DR: overall, per grade, and clinical (referable, VTDR).

Everything comes from one confusion matrix over grades 0-4, plus the probabilities for AUC.
Undefined values (a grade absent from validation) are ``None``, never a made-up number.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from sklearn.metrics import roc_auc_score

from drsearch.clinical import NUM_CLASSES, PROPORTIONS, metric_value, wilson_lower


def confusion(labels: np.ndarray, preds: np.ndarray) -> np.ndarray:
    """5x5 counts, rows true grade, columns predicted grade."""
    idx = labels.astype(int) * NUM_CLASSES + preds.astype(int)
    return np.bincount(idx, minlength=NUM_CLASSES**2).reshape(NUM_CLASSES, NUM_CLASSES)


def quadratic_kappa(cm: np.ndarray) -> float | None:
    """Cohen's kappa with quadratic weights on grade distance (grades 0-4 always, so a grade
    absent from both sides never shifts the weights: the one kappa of drsearch)."""
    cm = np.asarray(cm, dtype=float)
    n = cm.sum()
    if n == 0:
        return None
    k = cm.shape[0]
    w = (np.arange(k)[:, None] - np.arange(k)[None, :]) ** 2
    expected = np.outer(cm.sum(1), cm.sum(0)) / n
    denom = float((w * expected).sum())
    if denom == 0:
        return None
    return 1.0 - float((w * cm).sum()) / denom


def qwk(labels: np.ndarray, preds: np.ndarray) -> float | None:
    """The quadratic weighted kappa of grades ``preds`` against ``labels`` (``None`` when
    undefined: no image, or one grade on both sides)."""
    return quadratic_kappa(confusion(np.asarray(labels), np.asarray(preds)))


def _ratio(num: float, den: float) -> float | None:
    return float(num / den) if den else None


def compute_metrics(
    labels: np.ndarray, probs: np.ndarray, preds: np.ndarray | None = None
) -> dict[str, Any]:
    """All validation metrics from true grades and class probabilities (N x 5); the predicted
    grades are the most probable ones unless ``preds`` gives them (a thresholded score)."""
    labels = np.asarray(labels, dtype=int)
    preds = probs.argmax(axis=1) if preds is None else np.asarray(preds, dtype=int)
    cm = confusion(labels, preds)
    n = cm.sum()
    tp = np.diag(cm).astype(float)
    support = cm.sum(1).astype(float)
    called = cm.sum(0).astype(float)
    negatives = n - support
    tn = n - support - called + tp
    sens = [_ratio(tp[c], support[c]) for c in range(NUM_CLASSES)]
    spec = [_ratio(tn[c], negatives[c]) for c in range(NUM_CLASSES)]
    present = [s for s in sens if s is not None]
    f1 = [
        2 * tp[c] / (support[c] + called[c])
        for c in range(NUM_CLASSES)
        if support[c] + called[c] > 0
    ]
    precision = [_ratio(tp[c], called[c]) for c in range(NUM_CLASSES)]
    referred = [_ratio(cm[c, 2:].sum(), support[c]) for c in range(NUM_CLASSES)]
    counted = cm.tolist()
    # every metric a constraint may bound: from its counts, as clinical defines it (one rule)
    constrained = {name: metric_value(name, counted) for name in PROPORTIONS}
    return {
        "accuracy": _ratio(tp.sum(), n),
        "balanced_accuracy": float(np.mean(present)) if present else None,
        "qwk": quadratic_kappa(cm),
        "macro_f1": float(np.mean(f1)) if f1 else None,
        "sensitivity": sens,
        "specificity": spec,
        "sensitivity_wilson_lower": [
            wilson_lower(int(tp[c]), int(support[c])) for c in range(NUM_CLASSES)
        ],
        "support": [int(s) for s in support],
        "sensitivity_severe_npdr": sens[3],
        "sensitivity_pdr": sens[4],
        "min_specificity": constrained["min_specificity"],
        "min_sensitivity": constrained["min_sensitivity"],
        # over-calling: of the images called grade g, the share that are (PPV)
        "precision": precision,
        "ppv_severe_npdr": precision[3],
        "ppv_pdr": precision[4],
        # the screening decision per grade: the share of a grade's images called referable
        "referred": referred,
        "referred_severe_npdr": constrained["referred_severe_npdr"],
        "referred_pdr": constrained["referred_pdr"],
        "referable_sensitivity": constrained["referable_sensitivity"],
        "referable_specificity": constrained["referable_specificity"],
        "referable_auc": _auc(labels >= 2, probs[:, 2:].sum(axis=1)),
        "vtdr_sensitivity": constrained["vtdr_sensitivity"],
        "vtdr_specificity": constrained["vtdr_specificity"],
        "confusion_matrix": cm.tolist(),
    }


def _auc(truth: np.ndarray, score: np.ndarray) -> float | None:
    if truth.all() or not truth.any():
        return None
    return float(roc_auc_score(truth, score))
