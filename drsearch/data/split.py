"""Train/validation/test split: stratified by grade, grouped by patient when patients are known.

Deterministic for a seed. The test side is carved first (``data.test_fraction`` of the images
whose ``use`` is ``split``, plus every image of a source with ``use: test``), so it does not
depend on the validation fraction, and a search never sees it: the trainer drops it before any
image is decoded. Validation is then taken from the rest (``data.val_fraction`` of all images).

Without patients, each grade contributes ``round(n_grade * fraction)`` images to the carved side
(at least one when the grade has two or more). With patients, sklearn's ``StratifiedGroupKFold``
with ``round(1 / fraction)`` folds keeps every patient's images on one side; its first fold is
the carved side.
"""

from __future__ import annotations

import csv
import io
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import NamedTuple

import numpy as np

from drsearch.data.records import ImageRecord
from drsearch.errors import DataError
from drsearch.io import write_text_atomic


class Sides(NamedTuple):
    """Indices (sorted) of the training, validation and test records."""

    train: np.ndarray
    val: np.ndarray
    test: np.ndarray


def val_share(val_fraction: float, test_fraction: float) -> float:
    """The validation fraction of what is left once the test side is carved out."""
    return val_fraction / (1.0 - test_fraction)


def held_out_indices(records: Sequence[ImageRecord], test_fraction: float, seed: int) -> np.ndarray:
    """Indices of the test records: those whose ``use`` is ``test``, and ``test_fraction`` of
    those whose ``use`` is ``split`` (stratified by grade, grouped by patient)."""
    is_test = np.array([r.use == "test" for r in records], dtype=bool)
    free = np.flatnonzero([r.use == "split" for r in records])
    if test_fraction > 0 and len(free):
        is_test[free[_carve([records[i] for i in free], test_fraction, seed, "test")]] = True
    return np.flatnonzero(is_test)


def split_indices(
    records: Sequence[ImageRecord], val_fraction: float, seed: int, test_fraction: float = 0.0
) -> Sides:
    """The train/validation/test split of ``records``.

    Records whose ``use`` is ``train``, ``val`` or ``test`` go there; the others are split.
    """
    test = held_out_indices(records, test_fraction, seed)
    rest = np.setdiff1d(np.arange(len(records)), test)
    kept = [records[i] for i in rest]
    share = val_share(val_fraction, test_fraction)
    is_val = np.array([r.use == "val" for r in kept], dtype=bool)
    free = np.flatnonzero([r.use == "split" for r in kept])
    if len(free):
        is_val[free[_carve([kept[i] for i in free], share, seed, "val")]] = True
    train_idx, val_idx = rest[~is_val], rest[is_val]
    if len(train_idx) == 0 or len(val_idx) == 0:
        raise DataError(
            f"data.val_fraction: {val_fraction} leaves {len(train_idx)} training and "
            f"{len(val_idx)} validation images from {len(records)}; use more images"
        )
    return Sides(train_idx, val_idx, test)


def _carve(subset: Sequence[ImageRecord], fraction: float, seed: int, side: str) -> np.ndarray:
    labels = np.array([r.label for r in subset])
    if any(r.patient_id for r in subset):
        groups = [r.patient_id or f"__image__{r.id}" for r in subset]
        return _grouped(labels, groups, fraction, seed, side)
    return _stratified(labels, fraction, seed)


def _stratified(labels: np.ndarray, val_fraction: float, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    chosen = []
    for grade in np.unique(labels):
        members = np.flatnonzero(labels == grade)
        rng.shuffle(members)
        n_val = int(round(len(members) * val_fraction))
        if len(members) >= 2:
            n_val = min(max(n_val, 1), len(members) - 1)
        chosen.append(members[:n_val])
    return np.concatenate(chosen)


def _grouped(
    labels: np.ndarray, groups: list[str], fraction: float, seed: int, side: str
) -> np.ndarray:
    n_folds = max(2, int(round(1 / fraction)))
    n_groups = len(set(groups))
    if n_groups < n_folds:
        raise DataError(
            f"data.{side}_fraction: {fraction:.3g} needs at least {n_folds} patients, "
            f"got {n_groups}"
        )
    # slow to import: only here
    from sklearn.model_selection import GroupShuffleSplit, StratifiedGroupKFold

    if np.bincount(labels).max() < n_folds:
        # too few images of every grade to stratify over this many folds (sklearn refuses):
        # keep patients together and carve the fraction by patients alone
        shuffle = GroupShuffleSplit(n_splits=1, test_size=fraction, random_state=seed)
        _, carved = next(shuffle.split(np.zeros(len(labels)), labels, groups))
        return np.sort(carved)
    folds = StratifiedGroupKFold(n_splits=n_folds, shuffle=True, random_state=seed)
    with warnings.catch_warnings():
        # "the least populated class has only k members": a rare grade cannot be in every
        # fold; the carved side still keeps patients whole, which is what must hold
        warnings.filterwarnings("ignore", "The least populated class", UserWarning)
        _, val = next(folds.split(np.zeros(len(labels)), labels, groups))
    return val


def write_split(
    path: Path, records: Sequence[ImageRecord], train_idx: np.ndarray, val_idx: np.ndarray
) -> None:
    """Record the training and validation sides as ``split.csv``
    (``id,split,patient_id,label,source``), atomically; the test side is not the run's."""
    side = {int(i): "train" for i in train_idx} | {int(i): "val" for i in val_idx}
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(["id", "split", "patient_id", "label", "source"])
    for i in sorted(side):
        r = records[i]
        writer.writerow([r.id, side[i], r.patient_id or "", r.label, r.source or ""])
    write_text_atomic(path, out.getvalue())
