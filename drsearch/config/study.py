"""Pydantic models of a study file: what to search, how to judge it, and where to run it."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Literal, get_args

from pydantic import Field, field_validator, model_validator

from drsearch.config.recipe import Epochs, KeyedValueError, Section, Seed

#: A study name: it becomes folder and file names under ``run_root``, so nothing that could
#: climb out of it (``..``, ``/``) or hide (a leading dot).
STUDY_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")

#: Validation metrics a study may optimise (all "higher is better") and their value ranges.
PRIMARY_METRICS = {
    "accuracy": (0.0, 1.0),
    "balanced_accuracy": (0.0, 1.0),
    "qwk": (-1.0, 1.0),
    "macro_f1": (0.0, 1.0),
    "referable_auc": (0.0, 1.0),
}
PrimaryMetric = Literal["accuracy", "balanced_accuracy", "qwk", "macro_f1", "referable_auc"]

#: Metrics a constraint may bound from below (each a number in [0, 1]).
ConstraintMetric = Literal[
    "accuracy",
    "balanced_accuracy",
    "macro_f1",
    "sensitivity_severe_npdr",
    "sensitivity_pdr",
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
        return f"{self.metric}>={self.min:g}"


def _default_constraints() -> list[Constraint]:
    return [
        Constraint(metric="sensitivity_severe_npdr", min=0.90),
        Constraint(metric="sensitivity_pdr", min=0.95),
        Constraint(metric="min_specificity", min=0.90),
    ]


class ObjectiveConfig(Section):
    """Primary metric to maximise, and medical-grade constraints on the best epoch."""

    metric: PrimaryMetric = "accuracy"
    constraints: list[Constraint] = Field(default_factory=_default_constraints)


class PrunerConfig(Section):
    """ASHA (Ray's ``ASHAScheduler``; Optuna's ``SuccessiveHalvingPruner`` in-process)."""

    enabled: bool = True
    metric: PrimaryMetric = "accuracy"
    grace_period: Epochs = 1
    reduction_factor: int = Field(3, ge=2, le=100)
    max_epochs: Epochs | None = None


class SamplerConfig(Section):
    name: Literal["tpe", "random", "gp", "cmaes"] = "tpe"
    seed: Seed | None = 0
    n_startup_trials: int = Field(5, ge=0, le=100_000)


class BudgetConfig(Section):
    n_trials: int = Field(20, ge=1, le=1_000_000)
    time_limit_s: float | None = Field(None, gt=0)


class ResourcesConfig(Section):
    cpus_per_trial: float = Field(1.0, gt=0, le=1024)
    gpus_per_trial: float = Field(0.0, ge=0, le=64)
    max_concurrent: int = Field(1, ge=1, le=4096)


class RayConfig(Section):
    address: str | None = None
    retries: int = Field(1, ge=0, le=100)
    reuse_actors: bool = True


class ReportConfig(Section):
    """Settings of ``drsearch report``."""

    gpu_hour_price: float | None = Field(None, ge=0)
    currency: str = "USD"
    top_trials: int = Field(5, ge=1, le=20)


class SmokeConfig(Section):
    """How ``drsearch run --smoke`` shrinks the study into a wiring check (drsearch/smoke.py)."""

    n_images: int = Field(60, ge=20, le=5000)
    epochs: int | None = Field(None, ge=1, le=100)  # default: 2, or one per resize phase
    n_trials: int = Field(2, ge=1, le=1000)
    max_image_size: int = Field(96, ge=32, le=512)
    batch_size: int = Field(8, ge=2, le=1024)
    model: str | None = None  # default: the study's architecture made tiny


class StudyConfig(Section):
    """A study file. Relative paths are relative to the current directory."""

    name: str
    recipe: Path | dict[str, Any]
    overrides: dict[str, Any] = Field(default_factory=dict)
    search_space: Path
    objective: ObjectiveConfig = Field(default_factory=ObjectiveConfig)
    pruner: PrunerConfig = Field(default_factory=PrunerConfig)
    sampler: SamplerConfig = Field(default_factory=SamplerConfig)
    budget: BudgetConfig = Field(default_factory=BudgetConfig)
    resources: ResourcesConfig = Field(default_factory=ResourcesConfig)
    executor: Literal["ray", "local"] = "ray"
    ray: RayConfig = Field(default_factory=RayConfig)
    report: ReportConfig = Field(default_factory=ReportConfig)
    storage: str | None = None
    run_root: Path = Path("runs")
    smoke: SmokeConfig = Field(default_factory=SmokeConfig)

    @field_validator("name")
    @classmethod
    def _safe_name(cls, name: str) -> str:
        if not STUDY_NAME.fullmatch(name):
            raise ValueError(
                "must be 1-64 letters, digits, '_', '-' or '.', starting with a letter or digit "
                f"(it names the study's folders under run_root), got {name!r}"
            )
        return name

    @model_validator(mode="after")
    def _check(self) -> StudyConfig:
        if self.resources.gpus_per_trial > 1 and not self.resources.gpus_per_trial.is_integer():
            raise KeyedValueError(
                "resources.gpus_per_trial",
                f"must be a fraction <= 1 or a whole number, got {self.resources.gpus_per_trial}",
            )
        return self

    @property
    def study_dir(self) -> Path:
        """Folder of the study's trial runs: ``<run_root>/<name>/``."""
        return self.run_root / self.name

    @property
    def artifact_dir(self) -> Path:
        """Optuna artifact store of the study (predictions, curves, ...): beside its database."""
        return self.run_root / f"{self.name}-artifacts"

    def storage_url(self) -> str:
        """The SQLAlchemy URL; by default a SQLite file beside the study folder."""
        if self.storage:
            return self.storage
        return f"sqlite:///{(self.run_root / f'{self.name}.db').resolve()}"
