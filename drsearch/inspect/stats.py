"""The statistics of a clinical evaluation, as plain functions of labels and scores.

- proportions (sensitivity, specificity, accuracy) get Wilson 95% intervals
  (``clinical.wilson_interval``);
- AUC and the quadratic weighted kappa get stratified-bootstrap percentile intervals: each
  resample draws, within every true grade, as many images as the grade has (so a rare grade is
  never missing from a resample), from a ``numpy`` generator with a fixed seed;
- an operating point is the threshold on a score (``P(grade >= k)``) chosen on validation for a
  target sensitivity or specificity, then applied unchanged elsewhere;
- calibration: the expected calibration error of the top-grade confidence (Guo et al. 2017,
  equal-width bins) and temperature scaling fitted by negative log-likelihood on validation.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from drsearch.clinical import wilson_interval

#: Bootstrap resamples for AUC and kappa intervals, and their seed.
N_BOOTSTRAP = 1000
BOOTSTRAP_SEED = 0
#: Equal-width confidence bins of the expected calibration error.
ECE_BINS = 15


@dataclass(frozen=True)
class Estimate:
    """A figure with its 95% interval (``low``/``high`` are ``None`` when undefined) and, for a
    proportion, its counts."""

    value: float | None
    low: float | None = None
    high: float | None = None
    successes: int | None = None
    n: int | None = None
    method: str = ""

    def as_dict(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if v is not None and v != ""}


def proportion(successes: int, n: int) -> Estimate:
    """``successes / n`` with its Wilson interval."""
    interval = wilson_interval(int(successes), int(n))
    if interval is None:
        return Estimate(None, successes=int(successes), n=int(n), method="wilson")
    return Estimate(successes / n, *interval, successes=int(successes), n=int(n), method="wilson")


def stratified_bootstrap(
    labels: np.ndarray,
    statistic: Callable[[np.ndarray], float | None],
    n_resamples: int = N_BOOTSTRAP,
    seed: int = BOOTSTRAP_SEED,
) -> Estimate:
    """``statistic(indices)`` on all images, with the 2.5 and 97.5 percentiles of its values on
    ``n_resamples`` resamples drawn within each grade of ``labels`` (undefined values skipped)."""
    labels = np.asarray(labels)
    value = statistic(np.arange(len(labels)))
    if value is None:
        return Estimate(None, method="stratified bootstrap")
    rng = np.random.default_rng(seed)
    groups = [np.flatnonzero(labels == g) for g in np.unique(labels)]
    values = []
    for _ in range(n_resamples):
        idx = np.concatenate([rng.choice(g, size=len(g), replace=True) for g in groups])
        v = statistic(idx)
        if v is not None and not math.isnan(v):
            values.append(v)
    if not values:
        return Estimate(float(value), method="stratified bootstrap")
    low, high = np.percentile(values, [2.5, 97.5])
    return Estimate(float(value), float(low), float(high), method="stratified bootstrap")


def auc_estimate(truth: np.ndarray, score: np.ndarray, seed: int = BOOTSTRAP_SEED) -> Estimate:
    """ROC AUC of ``score`` for the binary ``truth`` (scikit-learn), bootstrapped within the
    positive and negative images."""
    from sklearn.metrics import roc_auc_score

    truth = np.asarray(truth, dtype=bool)

    def auc(idx: np.ndarray) -> float | None:
        t = truth[idx]
        return None if t.all() or not t.any() else float(roc_auc_score(t, score[idx]))

    return stratified_bootstrap(truth.astype(int), auc, seed=seed)


def qwk_estimate(labels: np.ndarray, preds: np.ndarray, seed: int = BOOTSTRAP_SEED) -> Estimate:
    """Quadratic weighted kappa (scikit-learn), bootstrapped within each true grade."""
    from sklearn.metrics import cohen_kappa_score

    labels, preds = np.asarray(labels, dtype=int), np.asarray(preds, dtype=int)

    def qwk(idx: np.ndarray) -> float | None:
        y, p = labels[idx], preds[idx]
        if len(np.unique(np.concatenate([y, p]))) < 2:
            return None
        value = float(cohen_kappa_score(y, p, weights="quadratic"))
        return None if math.isnan(value) else value

    return stratified_bootstrap(labels, qwk, seed=seed)


def threshold_for_sensitivity(truth: np.ndarray, score: np.ndarray, target: float) -> float:
    """The highest threshold ``t`` with sensitivity of ``score >= t`` at least ``target``."""
    positives = np.sort(np.asarray(score)[np.asarray(truth, dtype=bool)])[::-1]
    if len(positives) == 0:
        raise ValueError("no positive image to choose a threshold on")
    k = max(1, math.ceil(target * len(positives) - 1e-12))
    return float(positives[k - 1])


def threshold_for_specificity(truth: np.ndarray, score: np.ndarray, target: float) -> float:
    """The lowest threshold ``t`` with specificity (``score < t`` among negatives) at least
    ``target``."""
    negatives = np.sort(np.asarray(score)[~np.asarray(truth, dtype=bool)])
    if len(negatives) == 0:
        raise ValueError("no negative image to choose a threshold on")
    m = math.ceil(target * len(negatives) - 1e-12)
    if m == 0:
        return float(negatives[0])
    return float(np.nextafter(negatives[m - 1], np.inf))


def at_threshold(truth: np.ndarray, score: np.ndarray, threshold: float) -> dict[str, Any]:
    """Sensitivity and specificity (with Wilson intervals) of calling ``score >= threshold``."""
    return at_calls(truth, np.asarray(score) >= threshold)


def at_calls(truth: np.ndarray, called: np.ndarray) -> dict[str, Any]:
    """Sensitivity and specificity (with Wilson intervals) of the positive ``called``."""
    truth, called = np.asarray(truth, dtype=bool), np.asarray(called, dtype=bool)
    return {
        "sensitivity": proportion(int((truth & called).sum()), int(truth.sum())).as_dict(),
        "specificity": proportion(int((~truth & ~called).sum()), int((~truth).sum())).as_dict(),
    }


def roc_points(truth: np.ndarray, score: np.ndarray) -> dict[str, list[float]]:
    """The ROC curve (scikit-learn's) as lists: false positive rate, true positive rate."""
    from sklearn.metrics import roc_curve

    truth = np.asarray(truth, dtype=bool)
    if truth.all() or not truth.any():
        return {"fpr": [], "tpr": []}
    fpr, tpr, _ = roc_curve(truth, score)
    return {"fpr": fpr.tolist(), "tpr": tpr.tolist()}


def calibration(probs: np.ndarray, labels: np.ndarray, n_bins: int = ECE_BINS) -> dict[str, Any]:
    """Expected calibration error of the top-grade confidence and its reliability bins."""
    probs, labels = np.asarray(probs, dtype=np.float64), np.asarray(labels, dtype=int)
    confidence = probs.max(axis=1)
    correct = probs.argmax(axis=1) == labels
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    which = np.clip(np.digitize(confidence, edges[1:-1], right=True), 0, n_bins - 1)
    bins, ece = [], 0.0
    for b in range(n_bins):
        members = which == b
        count = int(members.sum())
        if count == 0:
            continue
        conf, acc = float(confidence[members].mean()), float(correct[members].mean())
        ece += count / len(labels) * abs(acc - conf)
        bins.append({"low": float(edges[b]), "high": float(edges[b + 1]), "n": count,
                     "confidence": conf, "accuracy": acc})  # fmt: skip
    return {"ece": ece, "bins": bins, "n_bins": n_bins}


def fit_temperature(
    outputs: np.ndarray, labels: np.ndarray, to_probs: Callable[[np.ndarray], np.ndarray]
) -> float:
    """The temperature ``T`` (0.05 to 20) minimising the negative log-likelihood of
    ``to_probs(outputs / T)`` on ``labels`` (Guo et al. 2017)."""
    from scipy.optimize import minimize_scalar

    labels = np.asarray(labels, dtype=int)
    rows = np.arange(len(labels))

    def nll(log_t: float) -> float:
        p = to_probs(outputs / math.exp(log_t))[rows, labels]
        return float(-np.log(np.clip(p, 1e-12, 1.0)).mean())

    found = minimize_scalar(nll, bounds=(math.log(0.05), math.log(20.0)), method="bounded")
    return float(math.exp(found.x))
