"""Regression and ordinal heads: losses against hand computations, grades from thresholds,
thresholds fitted for the quadratic weighted kappa (scikit-learn's)."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from sklearn.metrics import cohen_kappa_score

from drsearch.train.heads import (
    fit_thresholds,
    grade_probabilities,
    grade_score,
    head_loss,
    to_grades,
)
from drsearch.train.loss import one_hot_smoothed
from tests.conftest import make_recipe


def bce(logit: float, target: float) -> float:
    p = 1 / (1 + math.exp(-logit))
    return -(target * math.log(p) + (1 - target) * math.log(1 - p))


def test_ordinal_loss_is_one_binary_question_per_grade_boundary() -> None:
    out = torch.tensor([[2.0, 0.5, -1.0, -3.0]])
    target = one_hot_smoothed(torch.tensor([2]), 0.0)  # grade 2: > 0 yes, > 1 yes, > 2 no
    by_hand = bce(2.0, 1) + bce(0.5, 1) + bce(-1.0, 0) + bce(-3.0, 0)
    assert head_loss("ordinal", out, target, None).item() == pytest.approx(by_hand, rel=1e-6)
    mixed = 0.5 * one_hot_smoothed(torch.tensor([1]), 0.0) + 0.5 * one_hot_smoothed(
        torch.tensor([3]), 0.0
    )  # MixUp of grades 1 and 3: P(>0)=1, P(>1)=0.5, P(>2)=0.5, P(>3)=0
    by_hand = bce(2.0, 1) + bce(0.5, 0.5) + bce(-1.0, 0.5) + bce(-3.0, 0)
    assert head_loss("ordinal", out, mixed, None).item() == pytest.approx(by_hand, rel=1e-6)


def test_regression_loss_aims_at_the_expected_grade_with_class_weights() -> None:
    out = torch.tensor([[1.5], [4.0]])
    targets = torch.stack(
        [0.5 * one_hot_smoothed(torch.tensor([1]), 0.0)[0] + 0.5 * one_hot_smoothed(
            torch.tensor([3]), 0.0)[0], one_hot_smoothed(torch.tensor([4]), 0.0)[0]]
    )  # fmt: skip
    weights = torch.tensor([1.0, 2.0, 1.0, 4.0, 3.0])
    # sample 1: expected grade 2, weight (2 + 4) / 2 = 3; sample 2: grade 4, weight 3
    by_hand = (3 * (1.5 - 2) ** 2 + 3 * (4.0 - 4) ** 2) / 2
    assert head_loss("regression", out, targets, weights).item() == pytest.approx(by_hand)


def test_grades_probabilities_and_scores_agree() -> None:
    out = np.array([[3.0, 2.0, -1.0, -2.0], [0.0, 1.0, -2.0, -4.0]])  # second: crossing logits
    probs = grade_probabilities("ordinal", out)
    assert np.allclose(probs.sum(axis=1), 1) and (probs >= 0).all()
    sig = 1 / (1 + np.exp(-out[0]))
    assert probs[0] == pytest.approx([1 - sig[0], sig[0] - sig[1], sig[1] - sig[2],
                                      sig[2] - sig[3], sig[3]])  # fmt: skip
    assert grade_score("ordinal", out)[0] == pytest.approx(sig.sum())
    assert list(to_grades(np.array([-1, 0.5, 0.51, 2.2, 3.6, 9]), [0.5, 1.5, 2.5, 3.5])) == [
        0, 1, 1, 2, 4, 4,
    ]  # fmt: skip
    scores = np.linspace(-1, 5, 61)[:, None]
    referable = grade_probabilities("regression", scores)[:, 2:].sum(axis=1)
    assert (np.diff(referable) > 0).all()  # AUC of the referable probability ranks by score


def test_thresholds_fitted_for_kappa_beat_the_midpoints() -> None:
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 5, 400)
    score = 0.6 * labels + 0.9 + rng.normal(0, 0.15, 400)  # a shrunk, shifted regressor
    fitted = fit_thresholds(score, labels)
    assert fitted == sorted(fitted) and len(fitted) == 4
    midpoints = cohen_kappa_score(
        labels, to_grades(score, [0.5, 1.5, 2.5, 3.5]), weights="quadratic"
    )
    best = cohen_kappa_score(labels, to_grades(score, fitted), weights="quadratic")
    assert best > midpoints + 0.05 and best > 0.93
    assert fit_thresholds(score, labels) == fitted  # deterministic


@pytest.mark.parametrize("head", ["ordinal", "regression"])
def test_a_run_with_a_score_head_reports_thresholded_grades(
    head: str, tmp_path: Path, tiny_dataset: Path
) -> None:
    import csv
    import json

    from drsearch.train import fit

    fixed = [0.4, 1.5, 2.5, 3.6] if head == "regression" else None
    recipe = make_recipe(
        tiny_dataset, train__epochs=2, model__head=head, model__thresholds=fixed,
        loss__class_weights="inverse_sqrt",
    )  # fmt: skip
    fit(recipe, run_dir=tmp_path / "run")
    log = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    thresholds = log[-1]["val"]["thresholds"]
    assert len(thresholds) == 4 and thresholds == sorted(thresholds)
    if fixed:
        assert thresholds == fixed
    best = json.loads((tmp_path / "run" / "metrics.json").read_text())
    rows = list(csv.DictReader((tmp_path / "run" / "predictions.csv").open()))
    labels = np.array([int(r["label"]) for r in rows])
    preds = np.array([int(r["pred"]) for r in rows])
    assert best["accuracy"] == pytest.approx(float((labels == preds).mean()))
    assert best["qwk"] == pytest.approx(cohen_kappa_score(labels, preds, weights="quadratic"))
    probs = np.array([[float(r[f"p{c}"]) for c in range(5)] for r in rows])
    assert np.allclose(probs.sum(axis=1), 1, atol=1e-5)


def test_a_score_head_has_its_own_loss_and_only_it_has_thresholds(tiny_dataset: Path) -> None:
    from drsearch.errors import ConfigError

    with pytest.raises(ConfigError, match="loss.name: focal is for model.head: classification"):
        make_recipe(tiny_dataset, model__head="ordinal", loss__name="focal")
    with pytest.raises(ConfigError, match="model.thresholds: only a regression or ordinal"):
        make_recipe(tiny_dataset, model__thresholds=[0.5, 1.5, 2.5, 3.5])
    with pytest.raises(ConfigError, match="model.thresholds: .*4 increasing numbers"):
        make_recipe(tiny_dataset, model__head="regression", model__thresholds=[2, 1, 3, 4])
