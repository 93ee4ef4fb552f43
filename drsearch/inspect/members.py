"""The models ``evaluate`` and ``predict`` grade with, and how each one sees an image.

A member is a trained model (``train.predict.TrainedModel``): a study's trial, or an exported
recipe with its weights, alone or as one of an exported ensemble's members. Before its model,
a member's images are made by its own recipe: decoded, preprocessed by ``data.preprocess`` at
``data.image_size`` (the normalisation that follows travels with the model). That is its
``Preparation``. Members of an ensemble may differ in it (a search may draw the image size or
Ben Graham's filter), so images are prepared once per distinct preparation and each member is
given its own: ``per_member`` for ``evaluate``'s validation and test splits, ``decode_for`` for
``predict``'s new images.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

from drsearch.config.recipe import PreprocessConfig, Recipe
from drsearch.data.decode import Decoded, Flagger, decode_prepared
from drsearch.errors import ConfigError
from drsearch.train.predict import TrainedModel

T = TypeVar("T")


@dataclass(frozen=True)
class Preparation:
    """What a member's images are before its model normalises them: the recipe's image size
    and its preprocessing (``data.preprocess``, as JSON: compared whole)."""

    size: int
    preprocess: str

    @classmethod
    def of(cls, recipe: Recipe) -> Preparation:
        d = recipe.data
        return cls(d.image_size, d.preprocess.model_dump_json())

    def config(self) -> PreprocessConfig:
        return PreprocessConfig.model_validate_json(self.preprocess)


def preparations(members: Sequence[TrainedModel]) -> dict[Preparation, TrainedModel]:
    """Each distinct preparation of ``members``, in member order, with the first member that
    has it (whose recipe prepares the images for every member that shares it)."""
    out: dict[Preparation, TrainedModel] = {}
    for m in members:
        out.setdefault(Preparation.of(m.recipe), m)
    return out


def per_member(members: Sequence[TrainedModel], prepare: Callable[[TrainedModel], T]) -> list[T]:
    """``prepare(member)`` for each member, in order: computed once per distinct preparation
    and shared by the members that have it."""
    done = {p: prepare(m) for p, m in preparations(members).items()}
    return [done[Preparation.of(m.recipe)] for m in members]


def decode_for(
    paths: Sequence[Path], wanted: Iterable[Preparation], flagger: Flagger | None = None
) -> tuple[dict[Preparation, np.ndarray], Decoded]:
    """``paths`` decoded once each and prepared every ``wanted`` way: pixels (N x S x S x 3)
    per preparation, and what was decoded (``data.decode.decode_prepared``)."""
    pixels = {p: np.empty((len(paths), p.size, p.size, 3), np.uint8) for p in wanted}
    by_preprocess: dict[str, dict[int, np.ndarray]] = {}
    for p, array in pixels.items():
        by_preprocess.setdefault(p.preprocess, {})[p.size] = array
    targets = [
        (PreprocessConfig.model_validate_json(prep), arrays)
        for prep, arrays in by_preprocess.items()
    ]
    return pixels, decode_prepared(paths, targets, flagger=flagger)


def recipe_member(recipe_file: Path, weights_file: Path) -> TrainedModel:
    """An exported (pinned) recipe and the weights ``export --weights`` wrote with it."""
    from drsearch.config.loading import load_recipe
    from drsearch.train.checkpoint import load_weights_only

    recipe = load_recipe(recipe_file)
    if recipe.pinned is None:
        raise ConfigError(
            f"{recipe_file}: not an exported recipe (no pinned: section); evaluate a study, or "
            "a recipe written by drsearch export"
        )
    fix = "export it again with drsearch export --weights"
    payload = load_weights_only(weights_file, str(weights_file), fix, ConfigError)
    if not isinstance(payload, dict) or not isinstance(payload.get("state_dict"), dict):
        raise ConfigError(f"{weights_file}: not weights written by drsearch export; {fix}")
    sha = hashlib.sha256(recipe_file.read_bytes()).hexdigest()
    if payload.get("recipe_sha256") != sha:
        raise ConfigError(
            f"{weights_file}: these weights were exported with another recipe file than "
            f"{recipe_file} (SHA-256 differs); {fix}"
        )
    return TrainedModel(
        label=weights_file.name,
        recipe=recipe,
        state_dict=payload["state_dict"],
        fingerprint=recipe.pinned.data_fingerprint,
        trial=payload.get("trial"),
        stored=recipe.pinned.evaluation,
    )


def ensemble_members(
    target: Path,
) -> tuple[list[TrainedModel], dict[str, Any] | None, tuple[str, ...]]:
    """An exported ensemble's members (each with what the ensemble's own evaluation chose for
    it, not its solo evaluation), its stored operating points and its views."""
    from drsearch.config.ensemble import load_ensemble

    ensemble = load_ensemble(target)
    evaluation = ensemble.evaluation or {}
    chosen = {m.get("trial"): m for m in evaluation.get("members", [])}
    members = []
    for ref in ensemble.members:
        member = recipe_member(ref.recipe, ref.weights)
        member.stored = chosen.get(member.trial)
        members.append(member)
    return members, evaluation.get("operating_points"), tuple(ensemble.views)
