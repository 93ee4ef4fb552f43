"""The medical rules, in one place: grades, endpoints, the constraints a DR grader is held to,
how a constraint is judged on a finite validation split, the study's objective and the
medical-grade checklist.

The ICDR grades are 0 none, 1 mild, 2 moderate, 3 severe NPDR and 4 PDR.

**Constraints are judged on counts.** Every constraint metric is a proportion of images (or,
for ``min_*`` and ``balanced_accuracy``, the worst or the mean of several), and its counts come
from the 5x5 confusion matrix (``metric_counts``). A constraint ``metric >= min`` is met on the
point estimate (``constraints_on: point``) or, by default, on its one-sided Wilson lower bound
at ``objective.confidence`` (``lower_bound``). The Wilson bound is the inversion of the score
test, so "lower bound >= min" is exactly "the estimate lies at least ``z`` standard errors
(taken at ``min``) above ``min``": the standard errors of shortfall ``max(0, z_req - z)`` are
the smooth penalty of the objective, and the same number decides feasibility. One image more
or less moves the penalty by a fraction of a standard error, never by a cliff. (A mean's bound,
balanced accuracy's, is shown as computed and may disagree; the score test decides, and says so.)

Wilson rather than a Beta posterior: it needs no prior (a uniform prior would already lend a
5/5 grade a posterior mean of 0.86), it is what the evaluation intervals and the literature
report, and it coincides with the score test, so the penalty and the rule share one number.

**No degenerate winner.** A model whose primary metric does not beat the trivial model on
the same split (every image called the commonest grade: accuracy = that grade's share,
balanced accuracy = 1 / grades present, QWK 0, macro F1 of that call, AUC 0.5) is infeasible
whatever its constraints say.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from statistics import NormalDist
from typing import Any, Literal

from drsearch.fmt import num, points

GRADES = ("none", "mild", "moderate", "severe_npdr", "pdr")
NUM_CLASSES = len(GRADES)

#: The medical-grade checklist's thresholds (judged on interval bounds, always ``>=``).
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
REFERABLE = ENDPOINTS["referable"]
#: ``drsearch evaluate``'s operating point: the threshold on P(grade >= k) chosen on
#: validation for this sensitivity (Gulshan et al. 2016's high-sensitivity point: 97.5%).
TARGET_SENSITIVITY = 0.975
#: Confidence level of every two-sided interval ``evaluate`` and the checklist report.
CONFIDENCE = 0.95
#: One-sided confidence of a constraint's lower bound (``objective.confidence``'s default).
CONSTRAINT_CONFIDENCE = 0.90
#: What one standard error of constraint shortfall costs in the objective, as a share of the
#: primary metric's range: 0.1 of accuracy, 0.2 of QWK.
PENALTY_PER_SE = 0.1

ConstraintsOn = Literal["point", "lower_bound"]
Result = Literal["pass", "fail", "inconclusive"]


@dataclass(frozen=True)
class DefaultConstraint:
    metric: str
    min: float
    reason: str


#: A study's constraints when its file names none, each with why.
DEFAULT_CONSTRAINTS = (
    DefaultConstraint(
        "referable_sensitivity", 0.85,
        "IDx-DR's pre-registered primary endpoint for more-than-mild DR: sensitivity > 85% "
        "(Abramoff et al., npj Digit Med 2018)",
    ),
    DefaultConstraint(
        "referable_specificity", 0.825,
        "IDx-DR's pre-registered specificity endpoint, > 82.5% (same trial): bounds "
        "over-calling into referral",
    ),
    DefaultConstraint(
        "referred_severe_npdr", 0.90,
        "a severe NPDR eye a screen does not refer is the miss screening exists to prevent; "
        "0.90 is the per-grade bar of the report's checklist, certifiable from 15 images",
    ),
    DefaultConstraint(
        "referred_pdr", 0.90,
        "as for severe NPDR: PDR needs treatment; 0.90 is certifiable from 15 images (0.95 "
        "would need 32 with none missed)",
    ),
    DefaultConstraint(
        "vtdr_specificity", 0.90,
        "bounds over-calling of grades 3-4 (urgent referral), which the grade sensitivities "
        "reward; Ting et al. (JAMA 2017) report 91.1% for vision-threatening DR",
    ),
)  # fmt: skip

#: Validation metrics a study may optimise (all "higher is better") and their value ranges.
PRIMARY_METRIC_RANGES = {
    "accuracy": (0.0, 1.0),
    "balanced_accuracy": (0.0, 1.0),
    "qwk": (-1.0, 1.0),
    "macro_f1": (0.0, 1.0),
    "referable_auc": (0.0, 1.0),
}


# -- the counts behind each constraint metric ------------------------------------------------
Matrix = Sequence[Sequence[float]]
Pairs = list[tuple[float, float]]  # (successes, n) of each proportion behind a metric


def _rows(cm: Matrix, grades: range | Sequence[int]) -> float:
    return float(sum(sum(cm[g]) for g in grades))


def _block(cm: Matrix, true: range, called: range) -> float:
    return float(sum(cm[t][c] for t in true for c in called))


def _binary(k: int, positive: bool) -> Callable[[Matrix], Pairs]:
    """Sensitivity (``positive``) or specificity of "grade >= k"."""

    def pairs(cm: Matrix) -> Pairs:
        hi, lo = range(k, NUM_CLASSES), range(k)
        if positive:
            return [(_block(cm, hi, hi), _rows(cm, hi))]
        return [(_block(cm, lo, lo), _rows(cm, lo))]

    return pairs


def _sensitivity(g: int) -> Callable[[Matrix], Pairs]:
    return lambda cm: [(float(cm[g][g]), float(sum(cm[g])))]


def _ppv(g: int) -> Callable[[Matrix], Pairs]:
    return lambda cm: [(float(cm[g][g]), float(sum(row[g] for row in cm)))]


def _referred(g: int) -> Callable[[Matrix], Pairs]:
    """Images of grade ``g`` the model refers (calls grade >= 2)."""
    return lambda cm: [(float(sum(cm[g][REFERABLE:])), float(sum(cm[g])))]


def _specificities(cm: Matrix) -> Pairs:
    n = _rows(cm, range(NUM_CLASSES))
    out = []
    for g in range(NUM_CLASSES):
        support, called = float(sum(cm[g])), float(sum(row[g] for row in cm))
        out.append((n - support - called + cm[g][g], n - support))
    return out


def _sensitivities(cm: Matrix) -> Pairs:
    return [_sensitivity(g)(cm)[0] for g in range(NUM_CLASSES)]


#: Every metric a constraint may bound: how it combines its proportions (one; the worst of
#: several; their mean) and the proportions, from a confusion matrix (rows true grades).
PROPORTIONS: dict[str, tuple[str, Callable[[Matrix], Pairs]]] = {
    "accuracy": ("one", lambda cm: [(float(sum(cm[g][g] for g in range(NUM_CLASSES))),
                                     _rows(cm, range(NUM_CLASSES)))]),
    "balanced_accuracy": ("mean", _sensitivities),
    "sensitivity_severe_npdr": ("one", _sensitivity(3)),
    "sensitivity_pdr": ("one", _sensitivity(4)),
    "referred_severe_npdr": ("one", _referred(3)),
    "referred_pdr": ("one", _referred(4)),
    "ppv_severe_npdr": ("one", _ppv(3)),
    "ppv_pdr": ("one", _ppv(4)),
    "min_specificity": ("min", _specificities),
    "min_sensitivity": ("min", _sensitivities),
    "referable_sensitivity": ("one", _binary(2, True)),
    "referable_specificity": ("one", _binary(2, False)),
    "vtdr_sensitivity": ("one", _binary(3, True)),
    "vtdr_specificity": ("one", _binary(3, False)),
}  # fmt: skip

#: The true grades whose images make the denominator of a metric (known before training:
#: ``check`` counts them on the validation split); PPVs depend on the calls and are absent.
DENOMINATOR_GRADES: dict[str, tuple[int, ...]] = {
    "sensitivity_severe_npdr": (3,),
    "sensitivity_pdr": (4,),
    "referred_severe_npdr": (3,),
    "referred_pdr": (4,),
    "referable_sensitivity": (2, 3, 4),
    "referable_specificity": (0, 1),
    "vtdr_sensitivity": (3, 4),
    "vtdr_specificity": (0, 1, 2),
}


def metric_pairs(metric: str, cm: Matrix) -> Pairs:
    """The defined ``(successes, n)`` proportions behind a constraint ``metric`` (``n`` > 0)."""
    _, pairs = PROPORTIONS[metric]
    return [(x, n) for x, n in pairs(cm) if n > 0]


def metric_value(metric: str, cm: Matrix) -> float | None:
    """A constraint metric from its counts (``None`` when undefined)."""
    kind, _ = PROPORTIONS[metric]
    ratios = [x / n for x, n in metric_pairs(metric, cm)]
    if not ratios:
        return None
    if kind == "mean":
        return sum(ratios) / len(ratios)
    return min(ratios)


# -- intervals -------------------------------------------------------------------------------
#: z for a two-sided 95% interval.
Z95 = 1.959963984540054


def one_sided_z(confidence: float) -> float:
    """z of a one-sided bound at ``confidence`` (1.2816 at 0.90)."""
    return NormalDist().inv_cdf(confidence)


def two_sided_z(confidence: float) -> float:
    return NormalDist().inv_cdf(0.5 + confidence / 2)


def wilson_interval(successes: float, n: float, z: float = Z95) -> tuple[float, float] | None:
    """The Wilson score interval of a proportion (95% by default); ``None`` when ``n`` is 0."""
    if n <= 0:
        return None
    p = successes / n
    centre = p + z * z / (2 * n)
    margin = z * math.sqrt(max(0.0, p * (1 - p) / n + z * z / (4 * n * n)))
    scale = 1 + z * z / n
    return max(0.0, (centre - margin) / scale), min(1.0, (centre + margin) / scale)


def wilson_lower(successes: float, n: float, z: float = Z95) -> float | None:
    """Lower end of the Wilson score interval for a proportion (95% by default)."""
    interval = wilson_interval(successes, n, z)
    return None if interval is None else interval[0]


def images_to_certify(minimum: float, confidence: float, misses: int = 0) -> int | None:
    """The fewest images with which ``misses`` failures still certify ``>= minimum`` (one-sided
    Wilson lower bound at ``confidence``); ``None`` when no count can (a minimum of 1)."""
    if minimum >= 1.0:
        return None
    if minimum <= 0.0:
        return misses + 1
    z = one_sided_z(confidence)
    n = max(1, misses + 1)
    while n < 10_000_000:
        low = wilson_lower(n - misses, n, z)
        if low is not None and low >= minimum:
            return n
        n += 1
    return None


# -- judging one constraint -------------------------------------------------------------------
@dataclass(frozen=True)
class Judgement:
    """One constraint ``metric >= minimum`` judged on counts.

    ``z`` is how many standard errors (of a proportion at ``minimum``, the score test's) the
    estimate lies above the minimum; ``met`` applies the study's rule (the point estimate, or
    the one-sided lower bound at ``confidence``); ``shortfall`` is the standard errors missing
    to meet it (0 when met): the objective's smooth penalty. ``result`` is the two-sided view a
    reviewer reads: pass (the interval lies above the minimum), fail (below) or inconclusive.
    ``lower`` is the bound as computed, never moved to agree with ``met``: for a mean (balanced
    accuracy) it uses the estimate's own variance while the score test takes it at the
    minimum, so the two may fall on either side of it; ``basis`` then says what decided.
    """

    name: str
    metric: str
    minimum: float
    value: float | None
    lower: float | None
    upper: float | None
    n: float  # images behind it (the worst grade's for ``min_*``; the smallest for a mean)
    z: float
    met: bool
    shortfall: float
    result: Result
    successes: float | None = None
    basis: str = ""  # what decided ``met`` where the bound alone would read otherwise


def constraint_name(metric: str, minimum: float) -> str:
    """How a constraint is named in records: ``referred_pdr>=0.9``."""
    return f"{metric}>={minimum:g}"


def _z(value: float, minimum: float, var_sum: float) -> float:
    """(value - minimum) in standard errors; ``var_sum`` the variance at the minimum."""
    se = math.sqrt(var_sum)
    if se == 0:
        return math.inf if value >= minimum else -math.inf
    return (value - minimum) / se


def _variance(minimum: float, n: float) -> float:
    # at a minimum of 0 or 1 the score test's variance vanishes; a floor of half an image's
    # worth keeps the distance finite (a minimum of 1 is met only by n/n, never certified)
    v = minimum * (1 - minimum)
    return max(v, 0.25 / (n * n)) / n


def judge(
    metric: str,
    minimum: float,
    cm: Matrix | None,
    rule: ConstraintsOn = "lower_bound",
    confidence: float = CONSTRAINT_CONFIDENCE,
    value: float | None = None,
) -> Judgement:
    """Judge ``metric >= minimum`` on the counts of confusion matrix ``cm``. Without a matrix
    (an old record), ``value`` is judged as a point with no evidence: never certified."""
    name = constraint_name(metric, minimum)
    z_req = 0.0 if rule == "point" else one_sided_z(confidence)
    z2 = two_sided_z(CONFIDENCE)
    pairs = metric_pairs(metric, cm) if cm is not None else []
    kind = PROPORTIONS[metric][0]
    if not pairs:
        if cm is None and value is not None:  # no counts: a point, no evidence
            z = _z(value, minimum, _variance(minimum, 1.0))
            met = rule == "point" and value >= minimum
            short = 0.0 if met else max(0.0, z_req - z, 1e-9 if rule != "point" else 0.0)
            return Judgement(name, metric, minimum, value, None, None, 0, z, met, short,
                             "inconclusive")  # fmt: skip
        # undefined (no image to measure it on): judged as 0 successes of 1, never met; a
        # reviewer's view cannot tell
        z = _z(0.0, minimum, _variance(minimum, 1.0))
        short = max(z_req - z, 1e-9)
        return Judgement(name, metric, minimum, None, None, None, 0, z, False, short,
                         "inconclusive")  # fmt: skip
    if kind == "mean":
        ratios = [x / n for x, n in pairs]
        value_ = sum(ratios) / len(ratios)
        k = len(pairs)
        z = _z(value_, minimum, sum(_variance(minimum, n) for _, n in pairs) / (k * k))
        # the mean's interval: normal, with each grade's Wilson-centred variance
        se_hat = math.sqrt(sum(_wilson_var(x, n) for x, n in pairs) / (k * k))
        lower = max(0.0, value_ - z_req * se_hat) if rule != "point" else None
        lo2, hi2 = max(0.0, value_ - z2 * se_hat), min(1.0, value_ + z2 * se_hat)
        n_min = min(n for _, n in pairs)
        successes = None
        passes, fails = lo2 >= minimum, hi2 < minimum
    else:
        # one proportion, or the worst of several (``min_*``: every grade must meet it; the
        # grade furthest below, in standard errors, decides, and its own figures are shown)
        judged = [(_z(x / n, minimum, _variance(minimum, n)), x, n) for x, n in pairs]
        z, x, n_min = min(judged, key=lambda t: (t[0], t[1] / t[2]))
        value_ = x / n_min
        successes = x
        lower = wilson_lower(x, n_min, z_req) if rule != "point" else None
        views = [wilson_interval(a, b, z2) or (0.0, 1.0) for _, a, b in judged]
        lo2, hi2 = wilson_interval(x, n_min, z2) or (None, None)
        passes = all(low >= minimum for low, _ in views)  # every grade shown to meet it
        fails = any(high < minimum for _, high in views)  # some grade shown to miss it
    if minimum <= 0.0:  # nothing to show: a proportion is never below 0
        z, passes, fails = max(z, z_req), True, False
    met = z >= z_req - 1e-12
    short = 0.0 if met else max(z_req - z, 1e-9)
    basis = ""
    if lower is not None and (lower >= minimum) != met:  # the honest bound, and why it lost
        basis = (
            f"{'met' if met else 'not met'} by the score test at the minimum: the estimate lies "
            f"{z:.2f} standard errors (taken at {minimum:g}) above it, {z_req:.2f} needed at "
            f"{confidence:.0%}; the bound takes the estimate's own variance"
        )
    result: Result = "pass" if passes else "fail" if fails else "inconclusive"
    return Judgement(name, metric, minimum, value_, lower, hi2, n_min, z, met, short, result,
                     successes, basis)  # fmt: skip


def _wilson_var(x: float, n: float) -> float:
    """Variance of a proportion with the Wilson (plus-four-like) centre, never 0."""
    z = Z95
    p = (x + z * z / 2) / (n + z * z)
    return p * (1 - p) / n


# -- the trivial model -------------------------------------------------------------------------
def trivial_value(metric: str, cm: Matrix) -> float | None:
    """What calling every image the commonest grade scores on the split of ``cm`` (the bar a
    primary metric must clear): accuracy, that grade's share; balanced accuracy, 1 / grades
    present; QWK 0; macro F1 of that one call; referable AUC 0.5."""
    support = [float(sum(row)) for row in cm]
    n = sum(support)
    if n == 0:
        return None
    present = sum(1 for s in support if s > 0)
    share = max(support) / n
    if metric == "accuracy":
        return share
    if metric == "balanced_accuracy":
        return 1.0 / present
    if metric == "qwk":
        return 0.0
    if metric == "macro_f1":
        return 2 * share / (1 + share) / present
    if metric == "referable_auc":
        return 0.5
    raise ValueError(f"no trivial model for {metric!r}")


# -- the objective -----------------------------------------------------------------------------
@dataclass
class Score:
    """The medical-grade objective of one epoch's (or a pooled) validation metrics.

    ``primary`` is the study's metric. A feasible result (it beats the trivial model and meets
    every constraint by the study's rule) scores ``primary``; an infeasible one scores
    ``primary - R * PENALTY_PER_SE * (standard errors of shortfall, summed)`` minus how far
    ``primary`` lies below the trivial model's, ``R`` being the metric's range (1, or 2 for
    QWK): continuous at the boundary, so one image moves it a little, not by a cliff.
    ``constraints`` are Optuna's constraint values (feasible when all are <= 0): ``min - lower
    bound`` (or ``min - estimate`` under ``point``) and ``trivial - primary``.
    """

    value: float
    primary: float
    constraints: dict[str, float]
    shortfalls: dict[str, float]  # standard errors of shortfall per constraint
    feasible: bool
    judgements: list[Judgement] = field(default_factory=list)
    trivial: float | None = None
    reasons: list[str] = field(default_factory=list)  # why infeasible, one line each


def trivial_name(metric: str) -> str:
    return f"{metric}>trivial"


def objective_score(
    metric: str,
    constraints: Sequence[tuple[str, float]],
    metrics: dict[str, Any],
    rule: ConstraintsOn = "lower_bound",
    confidence: float = CONSTRAINT_CONFIDENCE,
) -> Score:
    """The objective (``Score``) of ``metrics`` (with their ``confusion_matrix``) for a
    primary ``metric`` and constraints given as ``(metric, min)`` pairs."""
    low, high = PRIMARY_METRIC_RANGES[metric]
    width = high - low
    raw = metrics.get(metric)
    primary = low if raw is None or math.isnan(raw) else float(raw)
    cm = metrics.get("confusion_matrix")
    judgements = [
        judge(name, minimum, cm, rule, confidence, metrics.get(name))
        for name, minimum in constraints
    ]
    values: dict[str, float] = {}
    reasons = []
    for j in judgements:
        bound = j.value if rule == "point" else j.lower
        gap = minimum_gap(j, bound)
        values[j.name] = gap
        if not j.met:
            reasons.append(_why(j, rule, confidence))
    trivial = trivial_value(metric, cm) if cm is not None else None
    beats = trivial is None or primary > trivial
    if trivial is not None:
        values[trivial_name(metric)] = trivial - primary if beats else max(trivial - primary, 1e-12)
        if not beats:
            reasons.append(
                f"{metric} {primary:.3f} does not beat the trivial model's {trivial:.3f} "
                "(every image called the commonest grade)"
            )
    shortfalls = {j.name: j.shortfall for j in judgements}
    feasible = beats and all(j.met for j in judgements)
    penalty = width * PENALTY_PER_SE * sum(shortfalls.values())
    if trivial is not None and not beats:
        penalty += trivial - primary
    value = primary - penalty
    return Score(value, primary, values, shortfalls, feasible, judgements, trivial, reasons)


def minimum_gap(j: Judgement, bound: float | None) -> float:
    """Optuna's constraint value of a judgement: ``min - bound``, <= 0 exactly when met."""
    if bound is None:
        return 0.0 if j.met else max(j.minimum, 1e-12)
    gap = j.minimum - bound
    return min(gap, 0.0) if j.met else max(gap, 1e-12)


def _why(j: Judgement, rule: ConstraintsOn, confidence: float) -> str:
    if j.value is None:
        return f"{j.metric} is undefined on this split (no image to measure it on)"
    counts = f"{j.successes:g}/{j.n:g}" if j.successes is not None else f"n={j.n:g}"
    if rule == "point":
        return f"{j.metric} {j.value:.3f} ({counts}) < {j.minimum:g}"
    if j.lower is None:
        return f"{j.metric} {j.value:.3f}: no counts to bound it with"
    bound = f"{j.metric} {j.value:.3f} ({counts}): its {confidence:.0%} lower bound {j.lower:.3f}"
    return f"{bound}, but {j.basis}" if j.basis else f"{bound} < {j.minimum:g}"


# -- the checklist -----------------------------------------------------------------------------
@dataclass
class CheckItem:
    """One checklist line: ``result`` pass / fail / inconclusive, judged on a 95% interval
    (pass: its lower end reaches the threshold; fail: its upper end stays below)."""

    name: str
    observed: float | None
    threshold: str
    result: Result
    lower: float | None = None
    upper: float | None = None
    detail: str = ""
    unit: str = ""  # of ``observed`` where it is not a proportion ("points")

    @property
    def passed(self) -> bool:
        return self.result == "pass"

    def shown(self) -> str:
        """``observed`` as read: a proportion to 3 decimals, points as ``9.0 points``."""
        return points(self.observed, STABILITY_POINTS) if self.unit else num(self.observed)

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__) | {"shown": self.shown()}


def checklist(
    a: dict[str, Any], log: list[dict[str, Any]], side: str = "validation"
) -> list[CheckItem]:
    """The medical-grade checklist of a trial's best-epoch metrics ``a`` (measured on
    ``side``: validation, or the held-out test set). Each proportion is judged on its Wilson
    95% interval. On validation it ends with ``stability`` of the epoch ``log``; a training
    criterion, judged on validation epochs, it is no test-set result: ask for it apart."""
    cm = a.get("confusion_matrix")
    items = [_trivial_item(a, cm)]
    for label, metric, minimum, evidence in (
        ("overall accuracy", "accuracy", ACCURACY_MIN, f"{side} images"),
        ("severe NPDR sensitivity (grade 3)", "sensitivity_severe_npdr",
         SEVERE_NPDR_SENSITIVITY_MIN, f"{side} images of grade 3"),
        ("PDR sensitivity (grade 4)", "sensitivity_pdr", PDR_SENSITIVITY_MIN,
         f"{side} images of grade 4"),
        ("every per-grade specificity", "min_specificity", SPECIFICITY_MIN, "lowest"),
    ):  # fmt: skip
        items.append(_proportion_item(label, metric, minimum, a, cm, evidence))
    return [*items, stability(log)] if side == "validation" else items


def _proportion_item(
    label: str, metric: str, minimum: float, a: dict[str, Any], cm: Matrix | None, evidence: str
) -> CheckItem:
    j = judge(metric, minimum, cm, "point", value=a.get(metric))
    if cm is None:
        return CheckItem(label, a.get(metric), f">= {minimum:.2f}", "inconclusive",
                         detail="no counts recorded")  # fmt: skip
    if metric == "min_specificity":
        pairs = _specificities(cm)
        grade = next((g for g, p in enumerate(pairs) if p == (j.successes, j.n)), None)
        detail = (
            f"grade {grade} decides: {j.successes:g}/{j.n:g} of the other grades' images not "
            "called it"
            if grade is not None
            else ""
        )
    elif j.successes is not None:
        detail = f"{j.successes:g}/{j.n:g} {evidence}"
    else:
        detail = evidence
    return CheckItem(label, j.value, f">= {minimum:.2f}", j.result, _lower95(j), j.upper, detail)


def _lower95(j: Judgement) -> float | None:
    if j.successes is None or not j.n:
        return None
    return wilson_lower(j.successes, j.n)


def _trivial_item(a: dict[str, Any], cm: Matrix | None) -> CheckItem:
    acc = a.get("accuracy")
    trivial = trivial_value("accuracy", cm) if cm else None
    if acc is None or trivial is None:
        return CheckItem("beats the trivial model", acc, "> commonest grade's share",
                         "inconclusive", detail="no counts recorded")  # fmt: skip
    n = sum(sum(r) for r in cm)
    low, high = wilson_interval(acc * n, n) or (None, None)
    result: Result = (
        "pass" if low is not None and low > trivial
        else "fail" if acc <= trivial
        else "inconclusive"
    )  # fmt: skip
    return CheckItem(
        "beats the trivial model", acc, f"> {trivial:.3f} (every image the commonest grade)",
        result, low, high, f"accuracy over {n:g} images",
    )  # fmt: skip


def stability(log: list[dict[str, Any]]) -> CheckItem:
    """The checklist's "stable convergence" item: validation accuracy over the last
    ``STABLE_EPOCHS`` epochs spans less than ``STABILITY_POINTS`` points."""
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
    """The "< 5 points" rule on validation accuracies: max - min, in percentage points
    (rounded to the 1e-9 point, so 4.999999999999993 is 5 and does not pass)."""
    if len(accs) < 2:
        return CheckItem(name, None, rule, "inconclusive", detail=too_few, unit="points")
    spread = round((max(accs) - min(accs)) * 100, 9)
    return CheckItem(
        name,
        spread,
        rule,
        "pass" if spread < STABILITY_POINTS else "fail",
        detail=detail + ", ".join(f"{100 * x:.1f}%" for x in accs) + " (max - min)",
        unit="points",
    )
