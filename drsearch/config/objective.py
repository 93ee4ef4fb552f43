"""The objective a study ranks its trials by: a primary metric and medical-grade constraints.

A study file's ``objective:`` section; a study also pins it into every trial's recipe
(``train.monitor: objective``), so that a trial's best epoch is chosen on what the study
ranks by. The scoring rule itself is ``drsearch.clinical.objective_score``.
"""

from __future__ import annotations

from typing import Any, Literal, get_args

from pydantic import Field

from drsearch.clinical import (
    CONSTRAINT_CONFIDENCE,
    DEFAULT_CONSTRAINTS,
    PRIMARY_METRIC_RANGES,
    Score,
    constraint_name,
    objective_score,
)
from drsearch.config.base import Section

#: Validation metrics a study may optimise (all "higher is better") and their value ranges.
PRIMARY_METRICS = PRIMARY_METRIC_RANGES


PrimaryMetric = Literal["accuracy", "balanced_accuracy", "qwk", "macro_f1", "referable_auc"]


#: Metrics a constraint may bound from below: each a proportion of images (or the worst or
#: the mean of several), judged on its counts (``clinical.PROPORTIONS``).
ConstraintMetric = Literal[
    "accuracy",
    "balanced_accuracy",
    "sensitivity_severe_npdr",
    "sensitivity_pdr",
    "referred_severe_npdr",
    "referred_pdr",
    "ppv_severe_npdr",
    "ppv_pdr",
    "min_specificity",
    "min_sensitivity",
    "referable_sensitivity",
    "referable_specificity",
    "vtdr_sensitivity",
    "vtdr_specificity",
]


CONSTRAINT_METRICS = get_args(ConstraintMetric)


class Constraint(Section):
    """``metric >= min`` on the trial's best epoch."""

    metric: ConstraintMetric
    min: float = Field(ge=0, le=1)

    @property
    def name(self) -> str:
        return constraint_name(self.metric, self.min)


def _default_constraints() -> list[Constraint]:
    return [Constraint(metric=c.metric, min=c.min) for c in DEFAULT_CONSTRAINTS]


class ObjectiveConfig(Section):
    """Primary metric to maximise, and medical-grade constraints on the best epoch.

    ``constraints_on``: ``lower_bound`` (default) meets a constraint when its one-sided Wilson
    lower bound at ``confidence`` reaches the minimum; ``point`` when the estimate does."""

    metric: PrimaryMetric = "accuracy"
    constraints: list[Constraint] = Field(default_factory=_default_constraints)
    constraints_on: Literal["point", "lower_bound"] = "lower_bound"
    confidence: float = Field(CONSTRAINT_CONFIDENCE, ge=0.5, lt=1.0)

    def score(self, metrics: dict[str, Any]) -> Score:
        """The objective of one epoch's validation metrics (``clinical.objective_score``)."""
        return objective_score(
            self.metric,
            [(c.metric, c.min) for c in self.constraints],
            metrics,
            self.constraints_on,
            self.confidence,
        )
