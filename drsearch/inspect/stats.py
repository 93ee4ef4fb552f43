"""The statistics of a clinical evaluation, as plain functions of labels and scores.

- proportions (sensitivity, specificity, accuracy) get Wilson 95% intervals
  (``clinical.wilson_interval``) when images are independent;
- AUC and the quadratic weighted kappa get bootstrap percentile intervals that respect
  patients: each resample draws patients with replacement within the strata of their worst
  grade (as many as the stratum has, so a rare grade is never missing; each image its own
  patient when patients are unknown), from a ``numpy`` generator with a fixed seed; when a
  patient has several images, proportions get the same patient bootstrap instead of Wilson
  (Wilson on the patients behind the proportion where the bootstrap collapses, as on 40/40);
- an operating point is the threshold on a score (``P(grade >= k)``) chosen on validation for a
  target sensitivity or specificity, then applied unchanged elsewhere;
- calibration: the expected calibration error of the top-grade confidence (Guo et al. 2017,
  equal-width bins) and temperature scaling fitted by negative log-likelihood on validation.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
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
    patients: int | None = None  # patients behind a proportion's interval, when it rests on them

    def as_dict(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if v is not None and v != ""}


def proportion(successes: int, n: int) -> Estimate:
    """``successes / n`` with its Wilson interval."""
    interval = wilson_interval(int(successes), int(n))
    if interval is None:
        return Estimate(None, successes=int(successes), n=int(n), method="wilson")
    return Estimate(successes / n, *interval, successes=int(successes), n=int(n), method="wilson")


def resamples(
    labels: np.ndarray,
    groups: Sequence[str] | None = None,
    n_resamples: int = N_BOOTSTRAP,
    seed: int = BOOTSTRAP_SEED,
) -> list[np.ndarray]:
    """Bootstrap resamples (image indices) that respect patients: patients are drawn with
    replacement within the strata of their worst grade, as many as each stratum has, and a
    drawn patient brings all its images. Without ``groups`` each image is its own patient
    (the stratified-by-grade bootstrap). A fixed ``seed``: the same resamples every time."""
    labels = np.asarray(labels)
    if groups is None:
        groups = [str(i) for i in range(len(labels))]
    by_patient: dict[str, list[int]] = {}
    for i, g in enumerate(groups):
        by_patient.setdefault(g, []).append(i)
    patients = list(by_patient)  # in order of first image
    images = [np.array(by_patient[p]) for p in patients]
    worst = np.array([labels[ix].max() for ix in images])
    strata = [np.flatnonzero(worst == w) for w in np.unique(worst)]
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n_resamples):
        drawn = np.concatenate([rng.choice(s, size=len(s), replace=True) for s in strata])
        out.append(np.concatenate([images[p] for p in drawn]))
    return out


def clustered(groups: Sequence[str] | None) -> bool:
    """Whether some patient has several images (then images are not independent)."""
    return groups is not None and len(set(groups)) < len(groups)


def bootstrap(
    labels: np.ndarray,
    statistic: Callable[[np.ndarray], float | None],
    groups: Sequence[str] | None = None,
    n_resamples: int = N_BOOTSTRAP,
    seed: int = BOOTSTRAP_SEED,
) -> Estimate:
    """``statistic(indices)`` on all images, with the 2.5 and 97.5 percentiles of its values on
    the patient-respecting ``resamples`` (undefined values skipped)."""
    labels = np.asarray(labels)
    value = statistic(np.arange(len(labels)))
    method = "patient bootstrap" if clustered(groups) else "stratified bootstrap"
    if value is None:
        return Estimate(None, method=method)
    values = []
    for idx in resamples(labels, groups, n_resamples, seed):
        v = statistic(idx)
        if v is not None and not math.isnan(v):
            values.append(v)
    if not values:
        return Estimate(float(value), method=method)
    low, high = np.percentile(values, [2.5, 97.5])
    return Estimate(float(value), float(low), float(high), method=method)


def stratified_bootstrap(
    labels: np.ndarray,
    statistic: Callable[[np.ndarray], float | None],
    n_resamples: int = N_BOOTSTRAP,
    seed: int = BOOTSTRAP_SEED,
) -> Estimate:
    """``bootstrap`` with every image its own patient (resampled within its grade)."""
    return bootstrap(labels, statistic, None, n_resamples, seed)


def auc(truth: np.ndarray, score: np.ndarray) -> float | None:
    """ROC AUC as the Mann-Whitney statistic (ties count one half): what scikit-learn's
    ``roc_auc_score`` gives, at a fraction of its cost inside a bootstrap."""
    from scipy.stats import rankdata

    truth = np.asarray(truth, dtype=bool)
    pos = int(truth.sum())
    neg = len(truth) - pos
    if pos == 0 or neg == 0:
        return None
    ranks = rankdata(score)
    return float((ranks[truth].sum() - pos * (pos + 1) / 2) / (pos * neg))


def auc_estimate(
    truth: np.ndarray,
    score: np.ndarray,
    seed: int = BOOTSTRAP_SEED,
    groups: Sequence[str] | None = None,
    labels: np.ndarray | None = None,
) -> Estimate:
    """ROC AUC of ``score`` for the binary ``truth``, bootstrapped within the positive and
    negative images (or, with ``groups``, patients within the strata of their worst grade in
    ``labels``)."""
    truth = np.asarray(truth, dtype=bool)
    score = np.asarray(score, dtype=float)
    strata = truth.astype(int) if labels is None else np.asarray(labels)
    return bootstrap(strata, lambda idx: auc(truth[idx], score[idx]), groups, seed=seed)


def qwk_estimate(
    labels: np.ndarray,
    preds: np.ndarray,
    seed: int = BOOTSTRAP_SEED,
    groups: Sequence[str] | None = None,
) -> Estimate:
    """Quadratic weighted kappa (``train.metrics.qwk``: grades 0-4 always), bootstrapped within
    each true grade (or by patient, with ``groups``)."""
    from drsearch.train.metrics import qwk

    labels, preds = np.asarray(labels, dtype=int), np.asarray(preds, dtype=int)
    return bootstrap(labels, lambda idx: qwk(labels[idx], preds[idx]), groups, seed=seed)


def proportion_estimate(
    hits: np.ndarray, base: np.ndarray, labels: np.ndarray, groups: Sequence[str] | None,
    seed: int = BOOTSTRAP_SEED,
) -> Estimate:  # fmt: skip
    """The share of ``base`` images that are ``hits``: with its Wilson interval when images are
    independent; when a patient has several images, with the patient bootstrap's (the counts
    are kept either way).

    When the bootstrap's percentile interval collapses (every resample agrees, as for 40/40:
    every patient has the same share), the interval is Wilson's on the patients behind the
    proportion: ``n`` is the number of patients with at least one image in ``base`` (not
    every patient of the set), and the successes are the sum of those patients' shares
    (each patient's hits among its own ``base`` images). That is the cluster-level
    (summary-measure) analysis, one observation per patient: Kish's effective sample size at
    an intra-patient correlation of 1, the most conservative, and the only one the data cannot
    contradict when every patient agrees. ``patients`` records that ``n``.
    """
    hits, base = np.asarray(hits, dtype=bool), np.asarray(base, dtype=bool)
    k, n = int((hits & base).sum()), int(base.sum())
    if not clustered(groups) or n == 0:
        return proportion(k, n)

    def share(idx: np.ndarray) -> float | None:
        b = base[idx]
        return float((hits[idx] & b).sum() / b.sum()) if b.any() else None

    e = bootstrap(labels, share, groups, seed=seed)
    if e.low is None or e.high is None or e.low == e.high:
        # a percentile interval collapses when every resample agrees (40/40): Wilson's on the
        # patients behind the proportion is the honest width then
        shares, m = patient_shares(hits, base, groups or [])
        low, high = wilson_interval(shares, m) or (e.low, e.high)
        return Estimate(k / n, low, high, successes=k, n=n, method=f"Wilson ({m} patients)",
                        patients=m)  # fmt: skip
    return Estimate(k / n, e.low, e.high, successes=k, n=n, method="patient bootstrap")


def patient_shares(hits: np.ndarray, base: np.ndarray, groups: Sequence[str]) -> tuple[float, int]:
    """The sum over patients with ``base`` images of their share of ``hits`` among them, and
    how many such patients there are."""
    own: dict[str, list[int]] = {}
    for i in np.flatnonzero(base):
        own.setdefault(groups[i], []).append(int(i))
    return float(sum(hits[ix].mean() for ix in own.values())), len(own)


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


def at_threshold(
    truth: np.ndarray,
    score: np.ndarray,
    threshold: float,
    labels: np.ndarray | None = None,
    groups: Sequence[str] | None = None,
) -> dict[str, Any]:
    """Sensitivity and specificity (with their intervals) of calling ``score >= threshold``."""
    return at_calls(truth, np.asarray(score) >= threshold, labels, groups)


def at_calls(
    truth: np.ndarray,
    called: np.ndarray,
    labels: np.ndarray | None = None,
    groups: Sequence[str] | None = None,
) -> dict[str, Any]:
    """Sensitivity and specificity of the positive ``called``: Wilson intervals, or the patient
    bootstrap's when ``groups`` has patients with several images (strata from ``labels``)."""
    truth, called = np.asarray(truth, dtype=bool), np.asarray(called, dtype=bool)
    strata = truth.astype(int) if labels is None else np.asarray(labels)
    return {
        "sensitivity": proportion_estimate(called, truth, strata, groups).as_dict(),
        "specificity": proportion_estimate(~called, ~truth, strata, groups).as_dict(),
    }


def roc_points(truth: np.ndarray, score: np.ndarray) -> dict[str, list[float]]:
    """The ROC curve (scikit-learn's) as lists: false positive rate, true positive rate."""
    from sklearn.metrics import roc_curve

    truth = np.asarray(truth, dtype=bool)
    if truth.all() or not truth.any():
        return {"fpr": [], "tpr": []}
    fpr, tpr, _ = roc_curve(truth, score)
    return {"fpr": fpr.tolist(), "tpr": tpr.tolist()}


def _reliability(
    score: np.ndarray, hit: np.ndarray, n_bins: int, names: tuple[str, str]
) -> tuple[float, list[dict[str, Any]]]:
    """``score`` in ``n_bins`` equal bins against the fraction of ``hit`` in each: the
    image-weighted mean gap (ECE) and the non-empty bins (``names``: the two keys)."""
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    which = np.clip(np.digitize(score, edges[1:-1], right=True), 0, n_bins - 1)
    bins, ece = [], 0.0
    for b in range(n_bins):
        members = which == b
        count = int(members.sum())
        if count == 0:
            continue
        mean, observed = float(score[members].mean()), float(hit[members].mean())
        ece += count / len(score) * abs(observed - mean)
        bins.append({"low": float(edges[b]), "high": float(edges[b + 1]), "n": count,
                     names[0]: mean, names[1]: observed})  # fmt: skip
    return ece, bins


def calibration(probs: np.ndarray, labels: np.ndarray, n_bins: int = ECE_BINS) -> dict[str, Any]:
    """Expected calibration error of the top-grade confidence and its reliability bins."""
    probs, labels = np.asarray(probs, dtype=np.float64), np.asarray(labels, dtype=int)
    correct = probs.argmax(axis=1) == labels
    ece, bins = _reliability(probs.max(axis=1), correct, n_bins, ("confidence", "accuracy"))
    return {"ece": ece, "bins": bins, "n_bins": n_bins}


def grade_calibration(
    probs: np.ndarray, labels: np.ndarray, n_bins: int = 10
) -> list[dict[str, Any]]:
    """Per grade g, one-vs-rest reliability: ``P(grade = g)`` in ``n_bins`` equal bins against
    the fraction of images in the bin whose grade is g (what scikit-learn's
    ``calibration_curve(strategy="uniform")`` gives), and the grade's calibration error: the
    image-weighted mean gap (Kull et al. 2019's class-wise ECE, one term per grade)."""
    probs, labels = np.asarray(probs, dtype=np.float64), np.asarray(labels, dtype=int)
    out = []
    for g in range(probs.shape[1]):
        truth = labels == g
        ece, bins = _reliability(probs[:, g], truth, n_bins, ("predicted", "observed"))
        out.append({"grade": g, "n": int(truth.sum()), "ece": ece, "bins": bins})
    return out


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
