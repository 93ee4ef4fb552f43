"""What the model's last layer means (``model.head``), and how its outputs become grades.

- ``classification``: 5 logits; softmax probabilities; the grade is the most probable one.
- ``regression``: 1 output, the grade as a number (APTOS-2019's winning solutions); trained
  with a squared error against the target grade (the expected grade of a soft target).
- ``ordinal``: 4 logits, one per cumulative question "grade > k" (k = 0..3), trained with a
  binary cross-entropy each against ``P(grade > k)`` of the (soft) target: the
  cumulative-link / CORAL family (Cao et al. 2020), without CORAL's weight sharing.

Regression and ordinal heads give a continuous grade score (the output, or the sum of the
four ``P(grade > k)``). Its grades come from four thresholds: fitted on validation to
maximise the quadratic weighted kappa (Nelder-Mead from 0.5, 1.5, 2.5, 3.5, as the APTOS
"optimized rounder"), or fixed by ``model.thresholds``. Per-grade probabilities for AUC and
``predictions.csv``: the ordinal head's differences of its cumulative probabilities, the
regression head's ``softmax(-(score - c)**2)`` (monotone in the score, so AUCs rank by it).
Class weights weight each sample by its target's weight.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from drsearch.clinical import NUM_CLASSES

OUTPUTS = {"classification": NUM_CLASSES, "regression": 1, "ordinal": NUM_CLASSES - 1}
DEFAULT_THRESHOLDS = (0.5, 1.5, 2.5, 3.5)
_GRADES = torch.arange(NUM_CLASSES, dtype=torch.float32)


class HeadLoss(torch.nn.Module):
    """``head_loss`` of a regression or ordinal head as a module (class weights a buffer)."""

    def __init__(self, head: str, class_weights: Sequence[float] | None) -> None:
        super().__init__()
        self.head = head
        self.weighted = class_weights is not None
        weights = torch.tensor(list(class_weights or [1.0] * NUM_CLASSES), dtype=torch.float32)
        self.register_buffer("weights", weights)

    def forward(self, out: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return head_loss(self.head, out, targets, self.weights if self.weighted else None)


def head_loss(
    head: str, out: torch.Tensor, targets: torch.Tensor, weights: torch.Tensor | None
) -> torch.Tensor:
    """The loss of a regression or ordinal head on soft targets (N x 5), per-sample weighted
    by ``targets @ weights`` when class weights are set."""
    out = out.float()
    if head == "regression":
        expected = targets @ _GRADES.to(targets.device)
        per_sample = (out[:, 0] - expected).pow(2)
    elif head == "ordinal":
        above = 1.0 - targets.cumsum(dim=1)[:, :-1]  # P(grade > k), k = 0..3
        per_sample = F.binary_cross_entropy_with_logits(
            out, above.clamp(0.0, 1.0), reduction="none"
        ).sum(dim=1)
    else:
        raise ValueError(f"head_loss is for regression and ordinal heads, not {head!r}")
    if weights is not None:
        per_sample = per_sample * (targets @ weights)
    return per_sample.mean()


def grade_score(head: str, out: np.ndarray) -> np.ndarray:
    """The continuous grade (N) of a regression or ordinal head's outputs."""
    if head == "regression":
        return out[:, 0].astype(np.float64)
    return _cumulative(out).sum(axis=1)


def grade_probabilities(head: str, out: np.ndarray) -> np.ndarray:
    """Per-grade probabilities (N x 5) of a head's outputs."""
    from scipy.special import softmax

    if head == "classification":
        return softmax(out, axis=1)
    if head == "ordinal":
        above = _cumulative(out)
        ones, zeros = np.ones((len(out), 1)), np.zeros((len(out), 1))
        probs = np.hstack([ones, above]) - np.hstack([above, zeros])
        return probs / probs.sum(axis=1, keepdims=True)
    score = grade_score(head, out)[:, None]
    return softmax(-((score - np.arange(NUM_CLASSES)[None, :]) ** 2), axis=1)


def _cumulative(out: np.ndarray) -> np.ndarray:
    """``P(grade > k)`` made non-increasing in k (independent logits may cross)."""
    above = 1.0 / (1.0 + np.exp(-out.astype(np.float64)))
    return np.minimum.accumulate(above, axis=1)


def to_grades(score: np.ndarray, thresholds: Sequence[float]) -> np.ndarray:
    """Grades 0-4 of continuous scores: how many (sorted) thresholds each score reaches."""
    return np.searchsorted(np.sort(np.asarray(thresholds, dtype=np.float64)), score, side="right")


def decode(
    head: str, outputs: np.ndarray, labels: np.ndarray, fixed: Sequence[float] | None
) -> tuple[np.ndarray, np.ndarray, list[float] | None]:
    """Per-grade probabilities, predicted grades and (regression, ordinal) thresholds of a
    head's outputs.

    With ``fixed`` thresholds (``model.thresholds``, or cuts chosen elsewhere) every score is
    cut at them. Otherwise the thresholds are fitted for the kappa on these (validation)
    ``labels``, and each image is graded out of sample: by the cuts fitted on the other half
    of the split (``cross_fitted_grades``), never by cuts fitted on its own label. The
    returned thresholds (fitted on all of it) are what new images (test, an export) get."""
    probs = grade_probabilities(head, outputs)
    if head == "classification":
        return probs, probs.argmax(axis=1), None
    score = grade_score(head, outputs)
    if fixed is not None:
        return probs, to_grades(score, fixed), [float(t) for t in fixed]
    return probs, cross_fitted_grades(score, labels), fit_thresholds(score, labels)


def halves(labels: np.ndarray, seed: int = 0) -> np.ndarray:
    """A fixed half of the images (boolean mask), stratified by grade: each grade's images,
    shuffled with ``seed``, alternate between the halves."""
    labels = np.asarray(labels, dtype=int)
    rng = np.random.default_rng(seed)
    first = np.zeros(len(labels), dtype=bool)
    for grade in np.unique(labels):
        members = np.flatnonzero(labels == grade)
        rng.shuffle(members)
        first[members[::2]] = True
    return first


def cross_fitted_grades(score: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Grades of ``score`` where each half of the images is cut at the thresholds fitted on
    the other half (two-fold cross-fitting): no image's grade was fitted on its own label."""
    labels = np.asarray(labels, dtype=int)
    first = halves(labels)
    grades = np.empty(len(score), dtype=int)
    for fit_on, apply_to in ((first, ~first), (~first, first)):
        if apply_to.any():
            cuts = fit_thresholds(score[fit_on], labels[fit_on]) if fit_on.any() else None
            grades[apply_to] = to_grades(score[apply_to], cuts or DEFAULT_THRESHOLDS)
    return grades


def fit_thresholds(score: np.ndarray, labels: np.ndarray) -> list[float]:
    """Thresholds that maximise the quadratic weighted kappa of ``to_grades(score)``
    against ``labels``: Nelder-Mead from the midpoints, the best of start and result."""
    from scipy.optimize import minimize

    from drsearch.train.metrics import qwk

    labels = np.asarray(labels, dtype=int)

    def loss(t: np.ndarray) -> float:
        value = qwk(labels, to_grades(score, t))
        return 0.0 if value is None else -value

    start = np.array(DEFAULT_THRESHOLDS)
    found = minimize(loss, start, method="Nelder-Mead", options={"xatol": 1e-3, "maxiter": 400})
    best = found.x if found.fun <= loss(start) else start
    return [float(t) for t in np.sort(best)]
