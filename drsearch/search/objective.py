"""The medical-grade objective of a trial: its best epoch's score.

The rule (primary metric, minus ``R + shortfalls`` when a constraint fails) is
``drsearch.clinical.objective_score``; the trainer applies the same rule to every epoch
(``train.monitor: objective``), so a trial's best epoch is the epoch the study would rank
highest."""

from __future__ import annotations

from typing import Any

from drsearch.clinical import Score
from drsearch.config.objective import ObjectiveConfig

__all__ = ["Score", "score"]


def score(objective: ObjectiveConfig, metrics: dict[str, Any]) -> Score:
    """Primary metric minus the documented penalty (``clinical.objective_score``)."""
    return objective.score(metrics)
