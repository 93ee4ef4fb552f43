"""The models ``evaluate`` and ``predict`` grade with, and how each one sees an image.

A member is a trained model (``train.predict.TrainedModel``): a study's trial, or an exported
recipe with its weights, alone or as one of an exported ensemble's members. Before its model,
a member's images are made by its own recipe: decoded, preprocessed by ``data.preprocess`` at
``data.image_size`` (the normalisation that follows travels with the model). That is its
``Preparation``. Members of an ensemble may differ in it (a search may draw the image size or
Ben Graham's filter), so images are prepared once per distinct preparation and each member is
given its own: ``decode_for`` for ``predict``'s new images (``evaluate`` loads each member's
splits by its whole data section, which also holds its fold). ``validation_side`` and
``combine_members`` make one prediction of several members'.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from drsearch.config.recipe import PreprocessConfig, Recipe
from drsearch.data.decode import Decoded, Flagger, decode_prepared
from drsearch.errors import ConfigError
from drsearch.train.predict import TrainedModel

if TYPE_CHECKING:
    from drsearch.inspect.evaluate import EvalImages


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
    fix = "export it again with drsearch export (with --weights for one trial)"
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
    stored = list(evaluation.get("members", []))
    # the evaluation lists its members in the ensemble's order (export writes both from one
    # list): each member gets its own entry by position, never another's with the same trial
    # number (a certified result's members all confirm one trial)
    by_position = len(stored) == len(ensemble.members)
    chosen = {m.get("trial"): m for m in stored}
    members = []
    for i, ref in enumerate(ensemble.members):
        member = recipe_member(ref.recipe, ref.weights)
        member.stored = stored[i] if by_position else chosen.get(member.trial)
        members.append(member)
    return members, evaluation.get("operating_points"), tuple(ensemble.views)


# -- combining members' predictions ----------------------------------------------------------
@dataclass(frozen=True)
class ValidationSide:
    """The validation predictions operating points are chosen on."""

    labels: np.ndarray
    probs: np.ndarray
    preds: np.ndarray
    patients: list[str]
    ids: list[str]
    kind: str  # "shared" or "out-of-fold"


def validation_side(
    sides: Sequence[EvalImages], probs: list[np.ndarray], preds: list[np.ndarray]
) -> ValidationSide:
    """Members that validated on the same images: their combined predictions there. Members
    that validated on disjoint images (a study's fold models, its certified result): each
    image predicted by the member that never trained on it, pooled (out-of-fold), since the
    others trained on it. Overlapping but different validation images are refused."""
    ids = [s.val_ids for s in sides]
    if all(i == ids[0] for i in ids):
        p, pred = combine_members(probs, preds)
        first = sides[0]
        return ValidationSide(first.val.labels, p, pred, first.val_patients, first.val_ids,
                              "shared")  # fmt: skip
    flat = [x for i in ids for x in i]
    if len(set(flat)) != len(flat):
        raise ConfigError(
            "the models validated on different but overlapping images (neither one split nor "
            "one study's folds): no validation side is free of their training images"
        )
    return ValidationSide(
        np.concatenate([s.val.labels for s in sides]),
        np.concatenate(probs),
        np.concatenate(preds),
        [x for s in sides for x in s.val_patients],
        flat,
        "out-of-fold",
    )


def combine_members(
    probs: list[np.ndarray], grades: list[np.ndarray]
) -> tuple[np.ndarray, np.ndarray]:
    """One model's probabilities and grades as they are; an ensemble's mean per-grade
    probabilities and its most probable grade."""
    if len(probs) == 1:
        return probs[0], grades[0]
    mean = np.mean(probs, axis=0)
    return mean, mean.argmax(axis=1)
