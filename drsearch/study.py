"""Loading a study: the study file, its base recipe and its search space, checked together."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from drsearch.config.loading import build_model, read_yaml, set_dotted
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
    for key, value in (overrides or {}).items():
        if value is not None:
            set_dotted(data, key, value)
    config = build_model(StudyConfig, data, str(path))
    recipe = _base_recipe(path, config)
    space = load_search_space(config.search_space, recipe)
    _check_pruner(path, config, recipe)
    _check_storage(path, config)
    return LoadedStudy(path, config, recipe, space)


def _base_recipe(path: Path, config: StudyConfig) -> Recipe:
    if isinstance(config.recipe, Path):
        raw = read_yaml(config.recipe)
        source = f"{config.recipe} (recipe of {path})"
    else:
        raw, source = dict(config.recipe), f"{path}: recipe"
    for key, value in config.overrides.items():
        set_dotted(raw, key, value)
    return build_model(Recipe, raw, source)


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
        make_url(config.storage)
    except ArgumentError:
        raise ConfigError(
            f"{path}: storage: not an SQLAlchemy URL; use e.g. sqlite:///runs/study.db or "
            "postgresql+psycopg2://user@host/db"
        ) from None


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
