"""Loading a study: the study file, its base recipe and its search space, checked together."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from drsearch.config.loading import (
    absolute,
    build_model,
    is_recipe_file,
    read_yaml,
    recipe_with_overrides,
    set_dotted,
    with_absolute_paths,
)
from drsearch.config.recipe import Recipe
from drsearch.config.study import StudyConfig
from drsearch.errors import ConfigError
from drsearch.search_space import SearchSpace, load_search_space


@dataclass
class LoadedStudy:
    """A validated study: its config, the base recipe every trial starts from, the space."""

    path: Path
    config: StudyConfig
    recipe: Recipe
    space: SearchSpace

    @property
    def max_epochs(self) -> int:
        return self.config.pruner.max_epochs or self.recipe.train.epochs


def load_study(path: Path, overrides: dict[str, Any] | None = None) -> LoadedStudy:
    """Read ``path``, apply dotted CLI ``overrides`` and check everything a run will need."""
    data = read_yaml(path)
    if is_recipe_file(data):
        raise ConfigError(
            f"{path}: this is a training recipe, not a study file; train it with `drsearch "
            f"train {path}`, or name it as `recipe:` in a study file (see studies/demo.yaml)"
        )
    for key, value in (overrides or {}).items():
        if value is not None:
            set_dotted(data, key, value)
    config = build_model(StudyConfig, data, str(path))
    recipe = _base_recipe(path, config)
    space = load_search_space(config.search_space, recipe)
    _check_pruner(path, config, recipe)
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
    return LoadedStudy(path, config, with_absolute_paths(recipe, cwd), space)


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


def _base_recipe(path: Path, config: StudyConfig) -> Recipe:
    if isinstance(config.recipe, Path):
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


def check_inputs(loaded: LoadedStudy, generate: bool = True) -> None:
    """Before any trial: the data and weights the recipe names exist, and a synthetic set is
    generated (once for the whole study, not once per trial; not at all without
    ``generate``)."""
    check_weights_exist(loaded)
    data = loaded.recipe.data
    singles = [
        (
            f"data.sources.{i}",
            data.model_copy(update={"kind": s.kind, "root": s.root, "csv": s.csv}),
        )
        for i, s in enumerate(data.sources)
    ] or [("data", data)]
    for key, single in singles:
        if single.kind == "synthetic":
            from drsearch.data.sources import ensure_synthetic

            if generate:
                ensure_synthetic(single)
            continue
        field, wanted = ("csv", single.csv) if single.kind == "csv" else ("root", single.root)
        if wanted is not None and not wanted.exists():
            raise ConfigError(
                f"{loaded.path}: {key}.{field}: {wanted} not found (relative paths in a study "
                f"and its recipe are read from the directory drsearch runs in, {Path.cwd()}); "
                "run drsearch from the folder the paths are relative to, or make them absolute"
            )


def check_weights_exist(loaded: LoadedStudy) -> None:
    """Fail before any trial starts when the recipe's weights file is missing."""
    pretrained = loaded.recipe.model.pretrained
    if pretrained is False:
        return
    from drsearch.train.named_weights import is_named

    if not is_named(pretrained) and not Path(pretrained).is_file():
        raise ConfigError(
            f"{loaded.path}: model.pretrained: weights file {pretrained} not found; download "
            "it (gated weights need a local copy), set model.pretrained: false, or try the "
            "wiring with --smoke"
        )


def sample_problems(loaded: LoadedStudy, n: int, seed: int = 0) -> list[str]:
    """Draw ``n`` configurations of the space at random (in memory, nothing stored) and
    validate each as a whole recipe; the one-line problem of each that fails."""
    import optuna

    from drsearch.search_space import sample, trial_recipe

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=seed))
    problems = []
    for i in range(n):
        trial = study.ask()
        try:
            trial_recipe(loaded.recipe, sample(trial, loaded.space, loaded.recipe), f"sample {i}")
        except ConfigError as exc:
            problems.append(str(exc))
        study.tell(trial, 0.0)
    return problems
