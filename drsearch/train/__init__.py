"""The DR trainer. Knows nothing of Optuna or Ray: ``fit(recipe, reporter) -> FitResult``.

Importing this package is light: torch, timm and albumentations load only when ``fit`` (or
another trainer name) is first used, so commands that need just a schedule or a table
(``drsearch lr``, ``report``) start fast.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from drsearch.train.schedule import steps_per_epoch
    from drsearch.train.seam import FitResult, Progress, Reporter, StopTraining
    from drsearch.train.trainer import fit

__all__ = ["FitResult", "Progress", "Reporter", "StopTraining", "fit", "steps_per_epoch"]


def __getattr__(name: str) -> Any:
    if name == "steps_per_epoch":
        from drsearch.train import schedule

        return schedule.steps_per_epoch
    if name == "fit":
        from drsearch.train import trainer

        return trainer.fit
    if name in __all__:
        from drsearch.train import seam

        return getattr(seam, name)
    raise AttributeError(f"module 'drsearch.train' has no attribute {name!r}")
