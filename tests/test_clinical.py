"""The medical rules: constraints judged on counts (point or lower bound), the smooth penalty,
the trivial-model bar, the checklist's pass / fail / inconclusive; pinned on hand-worked
counts and checked against scipy and scikit-learn."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy.optimize import brentq
from scipy.stats import binomtest, norm
from sklearn.metrics import cohen_kappa_score, precision_score, recall_score

from drsearch.clinical import (
    DEFAULT_CONSTRAINTS,
    PROPORTIONS,
    checklist,
    images_to_certify,
    judge,
    metric_value,
    objective_score,
    one_sided_z,
    seed_variation,
    stability,
    trivial_value,
    wilson_interval,
)
from drsearch.config.objective import CONSTRAINT_METRICS, Constraint, ObjectiveConfig
from drsearch.fmt import num
from drsearch.train.metrics import compute_metrics, qwk


def cm_with(grade: int, hits: int, n: int, others: int = 200) -> list[list[int]]:
    """A confusion matrix with ``n`` images of ``grade``, ``hits`` of them called that grade
    (the rest one grade lower), and ``others`` grade-0 images called 0."""
    cm = np.zeros((5, 5), dtype=int)
    cm[0, 0] = others
    cm[grade, grade] = hits
    cm[grade, grade - 1] = n - hits
    return cm.tolist()


@pytest.mark.parametrize(
    ("hits", "n", "minimum", "rule", "met"),
    [
        # APTOS at 20% validation: 39 severe NPDR images, a 0.90 constraint
        (35, 39, 0.90, "point", False),  # 0.897
        (36, 39, 0.90, "point", True),  # 0.923: one image flips the point rule
        (36, 39, 0.90, "lower_bound", False),  # 90% lower bound 0.850
        (37, 39, 0.90, "lower_bound", False),  # 0.883
        (38, 39, 0.90, "lower_bound", True),  # 0.918
        # 59 PDR images at 0.95
        (59, 59, 0.95, "lower_bound", True),  # 0.973 at 90% (one-sided)
        (58, 59, 0.95, "lower_bound", False),  # 0.945
        (58, 59, 0.95, "point", True),
        # the demo: 5 images
        (4, 5, 0.5, "lower_bound", True),  # 0.513
        (3, 5, 0.5, "lower_bound", False),
    ],
)
def test_constraint_rules_on_hand_worked_counts(hits, n, minimum, rule, met) -> None:
    j = judge("sensitivity_severe_npdr", minimum, cm_with(3, hits, n), rule)
    assert j.met is met
    assert j.value == pytest.approx(hits / n) and j.n == n and j.successes == hits
    assert (j.shortfall == 0) is met


def test_lower_bound_is_wilson_and_the_score_test_decides_it() -> None:
    """The one-sided Wilson bound at 0.90 is scipy's two-sided 0.80 Wilson interval's lower end,
    and "bound >= min" is exactly "z >= z_0.90" with z the score statistic at the minimum."""
    z = one_sided_z(0.90)
    assert z == pytest.approx(norm.ppf(0.90))
    for hits, n in [(35, 39), (36, 39), (59, 59), (24, 25), (1, 5), (0, 7)]:
        ref = binomtest(hits, n).proportion_ci(confidence_level=0.80, method="wilson")
        low, high = wilson_interval(hits, n, z)
        assert low == pytest.approx(ref.low, abs=1e-9) and high == pytest.approx(ref.high, abs=1e-9)
        j = judge("sensitivity_pdr", 0.9, cm_with(4, hits, n), "lower_bound")
        assert j.lower == pytest.approx(low, abs=1e-9) or j.met == (low >= 0.9)
        assert j.z == pytest.approx((hits / n - 0.9) / math.sqrt(0.9 * 0.1 / n))
        assert j.met == (low >= 0.9)
    # the bound, solved long-hand from the score test, where the estimate lies above it
    p_hat, n = 36 / 39, 39
    solved = brentq(lambda p: (p_hat - p) / math.sqrt(p * (1 - p) / n) - z, 1e-6, p_hat)
    assert wilson_interval(36, 39, z)[0] == pytest.approx(solved, abs=1e-9)


def test_images_needed_to_certify() -> None:
    # n/(n + z^2) >= m  <=>  n >= m z^2 / (1 - m)
    z2 = one_sided_z(0.90) ** 2
    assert images_to_certify(0.95, 0.90) == math.ceil(0.95 * z2 / 0.05)  # 32
    assert images_to_certify(0.90, 0.90) == math.ceil(0.90 * z2 / 0.10)  # 15
    one_miss = images_to_certify(0.90, 0.90, misses=1)
    assert judge("sensitivity_pdr", 0.9, cm_with(4, one_miss - 1, one_miss)).met
    assert not judge("sensitivity_pdr", 0.9, cm_with(4, one_miss - 2, one_miss - 1)).met
    assert images_to_certify(1.0, 0.90) is None


def test_the_penalty_is_smooth_and_one_image_moves_it_a_little() -> None:
    """Value = primary - 0.1 * range per standard error of shortfall: continuous at the
    boundary, so 35/39 and 36/39 (point rule) differ by about half a standard error, not by
    a cliff of the metric's range."""
    constraint = [("sensitivity_severe_npdr", 0.90)]

    def value(hits: int, rule: str) -> float:
        cm = np.array(cm_with(3, hits, 39))
        acc = np.trace(cm) / cm.sum()
        return objective_score(
            "accuracy", constraint, {"accuracy": acc, "confusion_matrix": cm.tolist()}, rule
        ).value

    se = math.sqrt(0.09 / 39)
    step = (1 / 39) / se  # one image, in standard errors
    acc_step = 1 / (200 + 39)
    assert value(36, "point") - value(35, "point") == pytest.approx(
        acc_step + 0.1 * ((0.9 - 35 / 39) / se), rel=1e-6
    )
    assert value(36, "point") - value(35, "point") < 0.06  # was 1.0 + shortfall before
    # under the lower bound each missing image costs 0.1 * 0.53 standard errors
    assert value(37, "lower_bound") - value(36, "lower_bound") == pytest.approx(
        acc_step + 0.1 * step, rel=1e-6
    )
    # continuous: where the rule is just met, the penalty is just 0
    met = value(38, "lower_bound")
    assert met == pytest.approx((200 + 38) / (200 + 39))


def test_no_degenerate_winner() -> None:
    """Calling every image grade 0 scores the commonest grade's share: not better than the
    trivial model, so infeasible whatever the constraints; a 0.07-accuracy over-caller too."""
    labels = np.array([0] * 146 + [1] * 14 + [2] * 30 + [3] * 5 + [4] * 5)
    probs = np.eye(5)[np.zeros(len(labels), dtype=int)]
    m = compute_metrics(labels, probs)
    s = objective_score("accuracy", [], m)
    assert trivial_value("accuracy", m["confusion_matrix"]) == pytest.approx(0.73)
    assert m["accuracy"] == pytest.approx(0.73) and not s.feasible
    assert "does not beat the trivial model's 0.730" in s.reasons[0]
    assert s.constraints["accuracy>trivial"] > 0
    # over-calling everything as PDR: PDR sensitivity 1.0, accuracy 0.025
    over = compute_metrics(labels, np.eye(5)[np.full(len(labels), 4)])
    s = objective_score("accuracy", [("sensitivity_pdr", 0.75)], over, "point")
    assert over["sensitivity_pdr"] == 1.0 and not s.feasible
    assert s.value < 0  # 0.025 - (0.73 - 0.025)
    # and the over-calling metrics see it
    assert over["ppv_pdr"] == pytest.approx(5 / 200) and over["vtdr_specificity"] == 0.0
    for metric, trivial in (("balanced_accuracy", 0.2), ("qwk", 0.0), ("referable_auc", 0.5)):
        assert trivial_value(metric, m["confusion_matrix"]) == pytest.approx(trivial)
    f1 = trivial_value("macro_f1", m["confusion_matrix"])
    assert f1 == pytest.approx(compute_metrics(labels, probs)["macro_f1"])


def test_every_constraint_metric_has_its_counts_and_they_agree_with_sklearn() -> None:
    assert set(CONSTRAINT_METRICS) == set(PROPORTIONS)
    rng = np.random.default_rng(3)
    labels = rng.integers(0, 5, 400)
    preds = np.where(rng.random(400) < 0.6, labels, rng.integers(0, 5, 400))
    m = compute_metrics(labels, np.eye(5)[preds])
    cm = m["confusion_matrix"]
    for metric in CONSTRAINT_METRICS:
        assert metric_value(metric, cm) == pytest.approx(m[metric]), metric
    recall = recall_score(labels, preds, labels=range(5), average=None)
    precision = precision_score(labels, preds, labels=range(5), average=None)
    assert m["sensitivity_pdr"] == pytest.approx(recall[4])
    assert m["ppv_severe_npdr"] == pytest.approx(precision[3])
    assert m["balanced_accuracy"] == pytest.approx(recall.mean())
    assert m["referable_sensitivity"] == pytest.approx(recall_score(labels >= 2, preds >= 2))
    assert m["vtdr_specificity"] == pytest.approx(recall_score(labels < 3, preds < 3))
    assert m["referred_pdr"] == pytest.approx(np.mean(preds[labels == 4] >= 2))


def test_one_qwk_with_labels_0_to_4_even_when_a_grade_is_absent() -> None:
    labels = np.array([0, 0, 1, 1, 4, 4, 4, 0])  # grades 2 and 3 absent
    preds = np.array([0, 1, 1, 1, 4, 1, 4, 0])
    ref = cohen_kappa_score(labels, preds, labels=list(range(5)), weights="quadratic")
    assert qwk(labels, preds) == pytest.approx(ref)
    # scikit-learn without labels weights by position among the grades present: it differs
    assert cohen_kappa_score(labels, preds, weights="quadratic") != pytest.approx(ref)
    from drsearch.inspect.stats import qwk_estimate

    assert qwk_estimate(labels, preds).value == pytest.approx(ref)


def test_checklist_is_pass_fail_or_inconclusive_on_95_percent_intervals() -> None:
    """PDR 24/25 = 0.96 "passes >= 0.95" on its point; its Wilson 95% interval 0.80-0.99
    straddles it: inconclusive. 59/59 too (0.939). Severe NPDR 1/10: fail."""
    cm = np.zeros((5, 5), dtype=int)
    cm[0, 0], cm[1, 1], cm[2, 2] = 600, 60, 150
    cm[3, 3], cm[3, 2] = 1, 9
    cm[4, 4], cm[4, 3] = 24, 1
    labels = np.repeat(np.arange(5), cm.sum(1))
    preds = np.concatenate([np.repeat(np.arange(5), cm[g]) for g in range(5)])
    a = compute_metrics(labels, np.eye(5)[preds])
    log = [{"val": {"accuracy": x}} for x in (0.95, 0.951, 0.952)]
    items = {c.name: c for c in checklist(a, log)}
    pdr = items["PDR sensitivity (grade 4)"]
    assert pdr.observed == pytest.approx(0.96) and pdr.result == "inconclusive"
    assert pdr.lower == pytest.approx(0.8046, abs=1e-4) and pdr.detail.startswith("24/25")
    assert items["severe NPDR sensitivity (grade 3)"].result == "fail"
    assert items["beats the trivial model"].result == "pass"
    assert items["stable convergence"].result == "pass"
    cm[4] = [0, 0, 0, 0, 59]
    labels = np.repeat(np.arange(5), cm.sum(1))
    preds = np.concatenate([np.repeat(np.arange(5), cm[g]) for g in range(5)])
    a = compute_metrics(labels, np.eye(5)[preds])
    pdr = {c.name: c for c in checklist(a, log)}["PDR sensitivity (grade 4)"]
    assert pdr.observed == 1.0 and pdr.lower == pytest.approx(0.9389, abs=1e-4)
    assert pdr.result == "inconclusive"  # >= 0.95 not shown at 95%


def test_five_points_is_not_less_than_five_points() -> None:
    item = seed_variation([0.80, 0.85])  # 4.999999999999993 in floating point
    assert item.observed == 5.0 and item.result == "fail"
    assert seed_variation([0.80, 0.849]).result == "pass"


def test_default_constraints_carry_their_reasons_and_are_the_objective_default() -> None:
    assert all(c.reason for c in DEFAULT_CONSTRAINTS)
    obj = ObjectiveConfig()
    assert [(c.metric, c.min) for c in obj.constraints] == [
        (c.metric, c.min) for c in DEFAULT_CONSTRAINTS
    ]
    assert obj.constraints_on == "lower_bound" and obj.confidence == 0.90
    with pytest.raises(ValueError):
        Constraint(metric="macro_f1", min=0.5)  # no counts to judge it by


def test_a_minimum_over_grades_is_decided_by_one_grade_shown_whole() -> None:
    """min_sensitivity: every grade must meet it; the grade furthest below in standard errors
    decides, and its own estimate, counts and bound are what is shown (never one grade's
    value beside another's counts)."""
    cm = np.diag([7800, 30, 40, 50, 60]).astype(int)
    cm[0, 1] = 2200  # grade 0: 0.78 of 10,000 images; grade 1 perfect on 30
    cm[1, 1], cm[1, 0] = 24, 6  # grade 1: 0.80 of 30
    j = judge("min_sensitivity", 0.79, cm.tolist(), "lower_bound")
    # 0.78 of 10,000 is 2.4 standard errors below 0.79; 0.80 of 30 is 0.13 above
    assert (j.successes, j.n, j.value) == (7800, 10000, 0.78) and not j.met
    assert j.lower == pytest.approx(wilson_interval(7800, 10000, one_sided_z(0.9))[0])
    assert j.result == "fail"  # grade 0's 95% interval lies below 0.79


def test_no_image_is_inconclusive_and_a_minimum_of_zero_is_always_met() -> None:
    cm = np.diag([50, 10, 10, 10, 0]).tolist()  # no PDR image
    j = judge("sensitivity_pdr", 0.9, cm)
    assert j.value is None and not j.met and j.result == "inconclusive"
    missed = np.diag([50, 10, 10, 0, 10])
    missed[3, 2] = 3  # 0 of 3 severe NPDR images called 3: 0.0 >= 0.0 holds
    zero = judge("sensitivity_severe_npdr", 0.0, missed.tolist())
    s = objective_score("accuracy", [("sensitivity_severe_npdr", 0.0)],
                        {"accuracy": 0.8, "confusion_matrix": np.diag([50, 10, 10, 3, 10])
                         .tolist()})  # fmt: skip
    assert zero.met and s.feasible and all(v <= 0 for v in s.constraints.values())


def test_a_balanced_accuracy_bound_is_shown_as_computed_and_the_decision_says_why() -> None:
    """Sensitivities 0, 0, 9, 10, 10 of 10 each: balanced accuracy 0.58. Its 90% lower bound
    (normal, each grade's Wilson-centred variance) is 0.515, above 0.5; the score test at the
    minimum (variance 0.5 * 0.5 / 10 per grade) puts the estimate 1.13 standard errors above
    0.5, short of 1.28: not met. The bound is shown as computed (it was bent to 0.49999...),
    and the decision states its basis."""
    from drsearch.config.study import StudyConfig
    from drsearch.search.annotations import trial_note
    from drsearch.search.trial import Outcome, judgement_record, score_attrs

    hits = [0, 0, 9, 10, 10]
    cm = np.zeros((5, 5), dtype=int)
    for g, k in enumerate(hits):
        cm[g, g], cm[g, (g + 1) % 5] = k, 10 - k
    z90, z95 = norm.ppf(0.90), norm.ppf(0.975)
    centred = [(k + z95**2 / 2) / (10 + z95**2) for k in hits]
    honest = 0.58 - z90 * math.sqrt(sum(p * (1 - p) / 10 for p in centred)) / 5
    z_at_min = (0.58 - 0.5) / (math.sqrt(5 * 0.25 / 10) / 5)
    j = judge("balanced_accuracy", 0.5, cm.tolist(), "lower_bound")
    assert j.lower == pytest.approx(honest, abs=1e-12)
    assert j.lower == pytest.approx(0.51493, abs=1e-5) and j.value == pytest.approx(0.58)
    assert j.z == pytest.approx(z_at_min, abs=1e-12) and z_at_min < z90 and not j.met
    assert j.basis == (
        "not met by the score test at the minimum: the estimate lies 1.13 standard errors "
        "(taken at 0.5) above it, 1.28 needed at 90%; the bound takes the estimate's own variance"
    )
    s = objective_score("accuracy", [("balanced_accuracy", 0.5)],
                        {"accuracy": 0.58, "confusion_matrix": cm.tolist()})  # fmt: skip
    assert not s.feasible and s.constraints["balanced_accuracy>=0.5"] > 0  # Optuna's, too
    assert s.reasons == [
        f"balanced_accuracy 0.580 (n=10): its 90% lower bound 0.515, but {j.basis}"
    ]
    # the trial's dashboard note: the honest bound, the decision and its basis on one row
    attrs = score_attrs(s) | {"best_epoch": 1, "epochs_completed": 1}
    objective = {"constraints": [{"metric": "balanced_accuracy", "min": 0.5}]}
    config = StudyConfig(name="s", recipe={}, search_space="space.yaml", objective=objective)
    note = trial_note(3, Outcome("COMPLETE", 0.5, attrs), config)
    assert f"| balanced_accuracy | >= 0.5 | 0.580 (n=10) | 0.515 | **no** ({j.basis}) |" in note
    assert judgement_record(j)["lower"] == j.lower
    # one proportion: Wilson's bound is the score test inverted; nothing to explain
    one = judge("sensitivity_pdr", 0.9, cm_with(4, 38, 39), "lower_bound")
    assert one.met and one.basis == "" and one.lower == pytest.approx(0.918, abs=1e-3)


def test_stable_convergence_is_in_points_and_no_test_set_result() -> None:
    """Validation accuracy 80, 89, 85% over the last 3 epochs spans 9 points: shown as
    "9.0 points" against "< 5 points" (it was 9.000 beside fractions), and listed only on
    the validation side's checklist, never among the test set's figures."""
    log = [{"val": {"accuracy": x}} for x in (0.95, 0.80, 0.89, 0.85)]
    item = stability(log)
    assert item.observed == pytest.approx(9.0) and item.result == "fail"
    assert item.threshold == "< 5 points over the last 3 epochs"
    assert (item.unit, item.detail) == (
        "points",
        "validation accuracy 80.0%, 89.0%, 85.0% (max - min)",
    )
    assert item.shown() == item.as_dict()["shown"] == "9.0 points"
    from drsearch.fmt import points

    # as many decimals as keep a figure on its side of the limit
    assert (points(4.96, 5.0), points(4.999, 5.0), points(5.04, 5.0), points(0.5)) == (
        "4.96 points", "4.999 points", "5.0 points", "0.5 points")  # fmt: skip
    assert stability(log[:1]).shown() == "n/a"
    cm = np.diag([50, 10, 10, 10, 10]).tolist()
    a = {"accuracy": 1.0, "confusion_matrix": cm}
    on_validation = [c.name for c in checklist(a, log, "validation")]
    on_test = [c.name for c in checklist(a, log, "test")]
    assert on_validation == [*on_test, "stable convergence"]
    assert all(c.shown() == num(c.observed) for c in checklist(a, log, "test"))
