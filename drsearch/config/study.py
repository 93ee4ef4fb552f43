"""A study file: its pydantic models, and loading it with its recipe and search space.

Every path a study names is resolved once here, against the directory drsearch runs in."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from drsearch.config.loading import (
    absolute,
    parse_config,
    read_kind,
    read_yaml,
    recipe_with_overrides,
    relative_hint,
    set_dotted,
    with_absolute_paths,
)
from drsearch.config.objective import (  # noqa: F401 - re-exported for study users
    CONSTRAINT_METRICS,
    PRIMARY_METRICS,
    Constraint,
    ConstraintMetric,
    ObjectiveConfig,
    PrimaryMetric,
)
from drsearch.config.recipe import Epochs, KeyedValueError, Recipe, Section, Seed
from drsearch.config.space import SearchSpace, load_search_space
from drsearch.errors import ConfigError

#: A study name: it becomes folder and file names under ``run_root``, so nothing that could
#: climb out of it (``..``, ``/``) or hide (a leading dot).
STUDY_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
#: The study user attribute that logs every use of its held-out test set (what, when).
TEST_LOG_ATTR = "drsearch:test_evaluations"


class PrunerConfig(Section):
    """ASHA. ``mode: promotion`` (the default) pauses a trial at a rung unless it is in the top
    ``1/reduction_factor`` of the trials that reached the rung, and resumes it from its
    checkpoint once it ranks there (``drsearch.search.scheduler``); ``mode: stopping`` drops
    it instead (Optuna's ``SuccessiveHalvingPruner``). Promotion is the default by evidence:
    on YAHPO's LCBench surrogate (34 tasks, bench/README.md "Issue 24") it ranked better than
    stopping at 1 and 4 workers, most of all early in the budget, where stopping ASHA lets the
    first trials, having no peers at their rungs yet, run to the end. ``reduction_factor`` 2
    by the same evidence: chosen on a development set (6 tasks x 3 seeds) and confirmed on
    fresh seeds of all 34 tasks, where it ranked better than 3 early in the budget and tied
    at its end (never worse); 4 ranked worse than 3. ``grace_period`` 2 did not differ
    from 1."""

    enabled: bool = True
    mode: Literal["stopping", "promotion"] = "promotion"
    # a validation metric, or ``objective``: the study's objective (primary minus penalty)
    metric: PrimaryMetric | Literal["objective"] = "accuracy"
    grace_period: Epochs = 1
    reduction_factor: int = Field(2, ge=2, le=100)
    max_epochs: Epochs | None = None


class SamplerConfig(Section):
    """The sampler. By default TPE fitted as BOHB fits its model (``fit_on: top_rung``): on
    YAHPO's LCBench surrogate (bench/hpo_lcbench.py, 34 tasks x 10 seeds, bench/README.md
    "Issue 24") it ranked best of every method at 50% and 100% of the budget at 1 and 4
    workers, ahead of random sampling under the same ASHA (the default before) and of every
    TPE fitted on Optuna's own view, which learns from trials pruned after one epoch and
    settles around the first ones that ran. TPE's options: ``multivariate`` (one joint density
    over the parameters; with ``group`` split by which parameters a trial has),
    ``constant_liar`` (trials still running count as bad results, so concurrent trials spread
    out); ``random_fraction``: the share of trials drawn at random instead (BOHB's
    ``random_fraction``; decided per trial from its seed)."""

    name: Literal["tpe", "random", "gp", "cmaes"] = "tpe"
    seed: Seed | None = 0
    n_startup_trials: int = Field(5, ge=0, le=100_000)
    multivariate: bool = True
    group: bool = True
    constant_liar: bool = True
    random_fraction: float = Field(0.0, ge=0.0, le=1.0)
    #: What TPE learns from: ``top_rung`` (BOHB's view, TPE's default: every trial at the
    #: highest ASHA rung at least max(n_startup_trials, parameters + 1) trials reached, by its
    #: value there) or ``outcomes`` (Optuna's: complete trials by their value, pruned ones
    #: below them by how far they got). Other samplers: ``outcomes`` (the only one they take).
    fit_on: Literal["outcomes", "top_rung"] = "outcomes"

    @model_validator(mode="before")
    @classmethod
    def _fit_on_default(cls, data: Any) -> Any:
        """``fit_on`` unset: ``top_rung`` for TPE, ``outcomes`` for the others (so that
        ``name: random`` alone is valid)."""
        if isinstance(data, dict) and "fit_on" not in data:
            name = data.get("name", cls.model_fields["name"].default)
            data = data | {"fit_on": "top_rung" if name == "tpe" else "outcomes"}
        return data

    def label(self) -> str:
        """The sampler as a methods section names it, e.g. ``TPE (fitted on the top rung, as
        BOHB)``."""
        label = {"tpe": "TPE", "gp": "Gaussian-process", "cmaes": "CMA-ES"}.get(self.name)
        if self.name == "tpe":
            on = "the top rung, as BOHB" if self.fit_on == "top_rung" else "outcomes"
            return f"{label} (fitted on {on})"
        return label or self.name

    @model_validator(mode="after")
    def _fit_on_needs_tpe(self) -> SamplerConfig:
        if self.fit_on != "outcomes" and self.name != "tpe":
            raise KeyedValueError(
                "sampler.fit_on",
                f"{self.fit_on} shapes what TPE learns from; set sampler.name: tpe, or drop fit_on",
            )
        return self


class BudgetConfig(Section):
    n_trials: int = Field(20, ge=1, le=1_000_000)
    #: no new trial starts this long after the run's first trial started (search/deadline.py)
    time_limit_s: float | None = Field(None, gt=0, le=10**9)
    #: how far past ``time_limit_s`` the leader of the highest rung may train to finish (its
    #: time estimated from its own epochs); unset: as long as it takes; 0: not at all
    finish_grace_s: float | None = Field(None, ge=0, le=10**9)


class ResourcesConfig(Section):
    cpus_per_trial: float = Field(1.0, gt=0, le=1024)
    gpus_per_trial: float = Field(0.0, ge=0, le=64)
    max_concurrent: int = Field(1, ge=1, le=4096)
    #: Memory each trial needs (GiB of RAM): Ray reserves it per trial, and ``check`` refuses
    #: a study whose trial needs more than the machine has
    memory_gb_per_trial: float | None = Field(None, gt=0, le=65_536)


class RayConfig(Section):
    address: str | None = None
    retries: int = Field(1, ge=0, le=100)
    reuse_actors: bool = True
    #: A trial Ray keeps PENDING this long while no trial runs cannot be placed: the run stops
    #: and says what it asked for and what the cluster has (an autoscaler adding nodes needs
    #: time: raise it for one)
    pending_timeout_s: float = Field(600.0, gt=0, le=86_400)


class MLflowConfig(Section):
    """MLflow tracking: ``tracking_uri`` (default: a SQLite store beside the study,
    ``<run_root>/<name>-mlflow.db``; the environment's ``DRSEARCH_MLFLOW_URI`` wins) and
    ``experiment`` (default: the study's name)."""

    tracking_uri: str | None = Field(None, min_length=1, max_length=2000)
    experiment: str | None = Field(None, min_length=1, max_length=500)


class WandbConfig(Section):
    """Weights & Biases tracking (needs ``wandb``): ``project`` (default: the study's name),
    ``entity``, ``mode`` (``offline`` by default: files under ``<run_root>/<name>-wandb/``,
    uploaded later with ``wandb sync``; ``online`` logs to the server as it goes)."""

    project: str | None = Field(None, min_length=1, max_length=128)
    entity: str | None = Field(None, min_length=1, max_length=128)
    mode: Literal["offline", "online"] = "offline"


class TrackingConfig(Section):
    """Where the study is tracked besides its Optuna database (``drsearch.search.tracking``)."""

    mlflow: MLflowConfig | None = None
    wandb: WandbConfig | None = None


class WarmStartConfig(Section):
    """Start from what worked before: the best ``top_k`` feasible configurations of an earlier
    study (``study``: its study file; or ``study_name`` with its ``storage`` URL), queued
    before the sampler's own, mapped onto this study's space (``drsearch.search.warmstart``)."""

    study: Path | None = None
    study_name: str | None = Field(None, min_length=1, max_length=200)
    storage: str | None = Field(None, min_length=1, max_length=2000)
    top_k: int = Field(5, ge=1, le=1000)

    @model_validator(mode="after")
    def _source(self) -> WarmStartConfig:
        if (self.study is None) == (self.study_name is None):
            raise KeyedValueError(
                "warm_start.study",
                "name one earlier study: its study file (study: OTHER.yaml), or study_name "
                "with its storage",
            )
        if self.study_name is not None and self.storage is None:
            raise KeyedValueError(
                "warm_start.storage", "study_name needs the storage URL the study lives in"
            )
        return self


class BaselineConfig(Section):
    """Run the base recipe as it is (the searched keys at the recipe's own values) as the
    study's first trial, so every study shows what the search gained over it."""

    enabled: bool = True


class ReportConfig(Section):
    """Settings of ``drsearch report``."""

    gpu_hour_price: float | None = Field(None, ge=0)
    currency: str = "USD"
    top_trials: int = Field(5, ge=1, le=20)


class FinalistConfig(Section):
    """The finalist stage: once the search budget is spent, the ``top_k`` trials by search
    value are retrained on every cross-validation fold (``folds``: their metrics pooled over
    the out-of-fold predictions) or with fresh seeds (``seeds``), and the study's best becomes
    the best feasible confirmed finalist (``drsearch.search.selection``)."""

    top_k: int = Field(3, ge=1, le=50)
    folds: int | None = Field(None, ge=2, le=20)
    seeds: int | None = Field(None, ge=2, le=20)
    #: race the finalists (``search/racing.py``): the ``candidates`` best enter with one fold
    #: or seed each, and runs go where the evidence is still open, up to ``cap`` runs (default
    #: ``top_k`` x folds or seeds: the fixed stage's compute)
    race: bool = False
    candidates: int | None = Field(None, ge=1, le=50)
    cap: int | None = Field(None, ge=1, le=1000)

    @model_validator(mode="after")
    def _one_way(self) -> FinalistConfig:
        if (self.folds is None) == (self.seeds is None):
            raise ValueError(
                "give folds (retrain on every cross-validation fold, pool the out-of-fold "
                "predictions: K times the rare-grade images) or seeds (retrain with fresh "
                "seeds on the same split), not both and not neither"
            )
        return self


class SmokeConfig(Section):
    """How ``drsearch run --smoke`` shrinks the study into a wiring check (search/smoke.py)."""

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
    tracking: TrackingConfig = Field(default_factory=TrackingConfig)
    warm_start: WarmStartConfig | None = None
    baseline: BaselineConfig | None = None
    finalists: FinalistConfig | None = None
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

    def compute_cost(self, seconds: float) -> tuple[float, float | None]:
        """GPU hours of ``seconds`` of trial wall time and their price (``None`` unpriced)."""
        gpu_hours = seconds / 3600 * self.resources.gpus_per_trial
        price = self.report.gpu_hour_price
        return gpu_hours, None if price is None else gpu_hours * price

    def storage_url(self) -> str:
        """The SQLAlchemy URL; by default a SQLite file beside the study folder."""
        if self.storage:
            return self.storage
        return f"sqlite:///{(self.run_root / f'{self.name}.db').resolve()}"


@dataclass
class LoadedStudy:
    """A validated study: its config, the base recipe every trial starts from, the space."""

    path: Path
    config: StudyConfig
    recipe: Recipe
    space: SearchSpace
    warnings: list[str] = field(default_factory=list)  # said by ``run`` and ``check``
    smoke: bool = False  # a wiring check (``--smoke``): too few images is said, not refused
    companion: bool = False  # a finalist stage's study (``search.selection``)

    @property
    def max_epochs(self) -> int:
        return self.config.pruner.max_epochs or self.recipe.train.epochs


def load_study(
    path: Path,
    overrides: dict[str, Any] | None = None,
    recipe_overrides: dict[str, Any] | None = None,
) -> LoadedStudy:
    """Read ``path``, apply dotted CLI ``overrides`` of study keys and ``recipe_overrides``
    (``run --set``: recipe keys for every trial, over the file's ``overrides:``), and check
    everything a run will need."""
    data = read_kind(path, "study")
    for key, value in (overrides or {}).items():
        if value is not None:
            set_dotted(data, key, value)
    if recipe_overrides:
        base = data.get("overrides") if isinstance(data.get("overrides"), dict) else {}
        data["overrides"] = {**base, **recipe_overrides}
    config = parse_config(StudyConfig, data, str(path))
    recipe = _base_recipe(path, config)
    # a trial's best epoch (its best.pt, early stopping, the value it is told with) is
    # chosen on what the study ranks by: the study's objective, pinned into every recipe
    train = recipe.train.model_copy(update={"monitor": "objective", "objective": config.objective})
    recipe = recipe.model_copy(update={"train": train, "data": _folds(path, config, recipe)})
    _check_pruner(path, config, recipe)
    capped = config.pruner.max_epochs
    cap_warning = []
    if capped is not None and capped < recipe.train.epochs:
        # a trial that stops at max_epochs on a schedule planned for train.epochs is not the
        # model a recipe of train.epochs retrains: every trial is planned for max_epochs, and
        # its config.yaml (and so the exported recipe) says so
        cap_warning = [
            f"{path}: pruner.max_epochs {capped} < train.epochs {recipe.train.epochs}: every "
            f"trial trains {capped} epochs on a schedule planned for {capped} (its recipe and "
            "the exported one say so); drop max_epochs to train the recipe's epochs"
        ]
        data = recipe.model_dump(mode="json")
        data["train"]["epochs"] = capped
        recipe = parse_config(Recipe, data, f"{path}: pruner.max_epochs applied to the recipe")
    if not config.search_space.exists():
        hint = relative_hint(path, config.search_space)
        raise ConfigError(f"{path}: search_space: {config.search_space} not found{hint}")
    space = load_search_space(config.search_space, recipe)
    warnings = cap_warning + _rung_warnings(path, config, recipe, space)
    _check_storage(path, config)
    # Every path is resolved here, once, against the invocation directory: trials run in
    # other working directories (Ray's trial folders, other nodes) and must not depend on it.
    cwd = Path.cwd()
    config = config.model_copy(
        update={
            "run_root": absolute(config.run_root, cwd),
            "storage": _absolute_sqlite(config.storage, cwd),
        }
    )
    return LoadedStudy(path, config, with_absolute_paths(recipe, cwd), space, warnings)


def _absolute_sqlite(url: str | None, base: Path) -> str | None:
    """A relative SQLite file in ``url`` made absolute (SQLAlchemy reads it against the cwd)."""
    if url is None:
        return None
    from sqlalchemy.engine import make_url

    parsed = make_url(url)
    if parsed.get_backend_name() != "sqlite" or parsed.database in (None, "", ":memory:"):
        return url
    if Path(parsed.database).is_absolute():
        return url
    fixed = parsed.set(database=str(absolute(Path(parsed.database), base)))
    return fixed.render_as_string(hide_password=False)


def _folds(path: Path, config: StudyConfig, recipe: Recipe) -> Any:
    """The recipe's data section with the finalist stage's folds: the search validates on
    fold 0 of the same folds its finalists are retrained on."""
    data = recipe.data
    folds = config.finalists.folds if config.finalists else None
    if folds is None:
        return data
    if data.cv_folds is not None and data.cv_folds != folds:
        raise ConfigError(
            f"{path}: finalists.folds is {folds} but the recipe's data.cv_folds is "
            f"{data.cv_folds}: the finalists are retrained on the folds the search validated "
            "on; make them equal (or drop data.cv_folds)"
        )
    return data.model_copy(update={"cv_folds": folds, "cv_fold": 0})


def _base_recipe(path: Path, config: StudyConfig) -> Recipe:
    if isinstance(config.recipe, Path):
        if not config.recipe.exists():
            raise ConfigError(
                f"{path}: recipe: {config.recipe} not found{relative_hint(path, config.recipe)}"
            )
        raw = read_yaml(config.recipe)
        source = f"{config.recipe} (recipe of {path})"
    else:
        raw, source = dict(config.recipe), f"{path}: recipe"
    return recipe_with_overrides(raw, config.overrides, source, f"{path}: overrides:")


def _check_pruner(path: Path, config: StudyConfig, recipe: Recipe) -> None:
    epochs = recipe.train.epochs
    pruner = config.pruner
    if pruner.max_epochs is not None and pruner.max_epochs > epochs:
        raise ConfigError(
            f"{path}: pruner.max_epochs must be <= train.epochs, "
            f"but got {pruner.max_epochs} > {epochs}"
        )
    limit = pruner.max_epochs or epochs
    if pruner.enabled and pruner.grace_period > limit:
        raise ConfigError(
            f"{path}: pruner.grace_period must be <= train.epochs, "
            f"but got {pruner.grace_period} > {limit}"
        )


def pruner_rungs(config: StudyConfig, max_epochs: int) -> list[int]:
    """The epochs after which ASHA compares trials: ``grace * reduction**k < max_epochs``."""
    pruner = config.pruner
    if not pruner.enabled:
        return []
    rungs, rung = [], pruner.grace_period
    while rung < max_epochs:
        rungs.append(rung)
        rung *= pruner.reduction_factor
    return rungs


def _rung_warnings(
    path: Path, config: StudyConfig, recipe: Recipe, space: SearchSpace
) -> list[str]:
    """ASHA rungs that judge trials while their warmup runs, or before the first resolution
    change of progressive resizing (the size they will be judged on at the end)."""
    rungs = pruner_rungs(config, config.pruner.max_epochs or recipe.train.epochs)
    warmup = float(recipe.schedule.warmup_epochs)
    searched = space.get("schedule.warmup_epochs")
    if searched is not None and getattr(searched, "high", None) is not None:
        warmup = max(warmup, float(searched.high))
    out = []
    early = [r for r in rungs if r <= warmup]
    if early:
        out.append(
            f"{path}: pruner rungs at epoch(s) {early} fall inside the LR warmup (up to "
            f"{warmup:g} epochs): ASHA will compare trials before they reach their LR; raise "
            "pruner.grace_period above the warmup"
        )
    phases = recipe.data.progressive
    if len(phases) > 1:
        first_change = phases[1].epoch
        searched = space.get("data.progressive.1.epoch")
        if searched is not None and getattr(searched, "high", None) is not None:
            first_change = max(first_change, int(searched.high))
        before = [r for r in rungs if r <= first_change]
        if before:
            out.append(
                f"{path}: pruner rungs at epoch(s) {before} come before the first resolution "
                f"change (epoch {first_change + 1} trains at {phases[1].size} px): ASHA will "
                f"judge trials at {phases[0].size} px; raise pruner.grace_period past "
                f"{first_change}"
            )
    return out


def _check_storage(path: Path, config: StudyConfig) -> None:
    if config.storage is None:
        return
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    try:
        url = make_url(config.storage)
    except (ArgumentError, ValueError):
        raise ConfigError(
            f"{path}: storage: not an SQLAlchemy URL; use e.g. sqlite:///runs/study.db or "
            "postgresql+psycopg2://user@host/db"
        ) from None
    backend = url.get_backend_name()
    if backend not in ("sqlite", "postgresql"):
        raise ConfigError(
            f"{path}: storage: {backend} is not supported; use SQLite (the default, one machine) "
            "or PostgreSQL (postgresql+psycopg2://user@host/db, several machines)"
        )
    try:
        url.get_dialect().import_dbapi()
    except ImportError:
        package = "psycopg2-binary" if backend == "postgresql" else url.drivername
        raise ConfigError(
            f"{path}: storage: the {url.drivername} driver is not installed; pip install "
            f"{package} (or 'drsearch[postgres]')"
        ) from None
    except Exception as exc:  # noqa: BLE001 - an unknown driver name, e.g. postgresql+nodriver
        raise ConfigError(
            f"{path}: storage: unknown database driver {url.drivername!r} "
            f"({type(exc).__name__}); use postgresql+psycopg2 or sqlite"
        ) from None
