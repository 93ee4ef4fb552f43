"""Metrics agree with scikit-learn on random predictions; undefined values are None."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn import metrics as skm

from drsearch.train.metrics import compute_metrics, wilson_lower


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_agrees_with_sklearn_on_random_predictions(seed: int) -> None:
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 5, 400)
    probs = rng.dirichlet(np.ones(5), 400)
    probs[np.arange(400), labels] += rng.random(400) * 0.5  # better than chance
    probs /= probs.sum(1, keepdims=True)
    preds = probs.argmax(1)
    m = compute_metrics(labels, probs)
    grades = list(range(5))
    assert m["accuracy"] == pytest.approx(skm.accuracy_score(labels, preds))
    assert m["balanced_accuracy"] == pytest.approx(skm.balanced_accuracy_score(labels, preds))
    assert m["qwk"] == pytest.approx(
        skm.cohen_kappa_score(labels, preds, weights="quadratic", labels=grades)
    )
    assert m["macro_f1"] == pytest.approx(skm.f1_score(labels, preds, average="macro"))
    assert m["sensitivity"] == pytest.approx(
        list(skm.recall_score(labels, preds, average=None, labels=grades))
    )
    cm = skm.confusion_matrix(labels, preds, labels=grades)
    assert m["confusion_matrix"] == cm.tolist()
    for c in grades:
        negatives = labels != c
        assert m["specificity"][c] == pytest.approx(float((preds[negatives] != c).mean()))
    referable = labels >= 2
    assert m["referable_auc"] == pytest.approx(skm.roc_auc_score(referable, probs[:, 2:].sum(1)))
    assert m["referable_sensitivity"] == pytest.approx(skm.recall_score(referable, preds >= 2))
    assert m["vtdr_specificity"] == pytest.approx(skm.recall_score(labels < 3, preds < 3))
    assert m["sensitivity_severe_npdr"] == m["sensitivity"][3]
    assert m["sensitivity_pdr"] == m["sensitivity"][4]


def test_wilson_lower_bound_known_values() -> None:
    # 8/10 -> Wilson 95% interval (0.4902, 0.9433)
    assert wilson_lower(8, 10) == pytest.approx(0.4902, abs=1e-4)
    assert wilson_lower(0, 10) == pytest.approx(0.0, abs=1e-12)
    assert wilson_lower(10, 10) == pytest.approx(0.7225, abs=1e-4)
    assert wilson_lower(0, 0) is None


def test_absent_grade_gives_none_not_a_number() -> None:
    labels = np.array([0, 0, 1, 2, 2])
    probs = np.eye(5)[[0, 1, 1, 2, 0]]
    m = compute_metrics(labels, probs)
    assert m["sensitivity"][3] is None and m["sensitivity"][4] is None
    assert m["sensitivity_wilson_lower"][4] is None
    assert m["sensitivity"][:3] == pytest.approx([0.5, 1.0, 0.5])
    assert m["vtdr_sensitivity"] is None
    assert m["support"] == [2, 1, 2, 0, 0]
