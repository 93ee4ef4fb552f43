"""Ensemble files (``drsearch export --top-k``): several pinned recipes with their weights, and
the views a test-time augmentation averages, evaluated as one model by ``drsearch evaluate``.

Member paths are relative to the ensemble file's folder, so an exported ensemble can move as
one folder.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import Field

from drsearch.config.base import Section

View = Literal["identity", "hflip", "vflip"]


class EnsembleMember(Section):
    """One model of the ensemble: a pinned recipe and the weights exported with it."""

    recipe: Path
    weights: Path


class Ensemble(Section):
    """The members, the views each member is averaged over, what an evaluation of the
    ensemble chose on validation (operating points, each member's temperature) and, for a
    study's certified result (``drsearch export`` of a crowned finalist), its certificate:
    what the finalist stage measured on these very models (``search.shipping``). A certified
    result of one seed is an ensemble of one."""

    members: list[EnsembleMember] = Field(min_length=1)
    views: list[View] = Field(default_factory=lambda: ["identity"], min_length=1)
    evaluation: dict[str, Any] | None = None
    certificate: dict[str, Any] | None = None


class EnsembleFile(Section):
    ensemble: Ensemble


def is_ensemble_file(data: Any) -> bool:
    return isinstance(data, dict) and set(data) == {"ensemble"}


def load_ensemble(path: Path) -> Ensemble:
    """Read and validate an ensemble file; member paths resolved against its folder."""
    from drsearch.config.loading import parse_config, read_yaml

    ensemble = parse_config(EnsembleFile, read_yaml(path), str(path)).ensemble
    folder = path.parent
    members = [
        EnsembleMember(recipe=folder / m.recipe, weights=folder / m.weights)
        for m in ensemble.members
    ]
    return ensemble.model_copy(update={"members": members})
