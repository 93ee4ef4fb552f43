"""The DR trainer. Knows nothing of Optuna or Ray: ``fit(recipe, reporter) -> FitResult``."""

from __future__ import annotations

from drsearch.train.fit import FitResult, Progress, Reporter, StopTraining, fit, steps_per_epoch

__all__ = ["FitResult", "Progress", "Reporter", "StopTraining", "fit", "steps_per_epoch"]
