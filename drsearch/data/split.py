"""Train/validation/test split: stratified by grade, grouped by patient when patients are known.

Deterministic for a seed. The test side is carved first (``data.test_fraction`` of the images
whose ``use`` is ``split``, plus every image of a source with ``use: test``), so it does not
depend on the validation fraction, and a search never sees it: the trainer drops it before any
image is decoded. Validation is then taken from the rest (``data.val_fraction`` of all images).

Without patients, each grade contributes ``round(n_grade * fraction)`` images to the carved side
(at least one when the grade has two or more). With patients, every patient's images stay on
one side: patients are grouped by their worst grade, and each group gives the carved side
whole patients until it holds ``round(images of the group * fraction)`` images (the fraction
is honoured in images, 0.4 gives 0.4).

Cross-validation (``data.cv_folds``): the non-test images whose ``use`` is ``split`` are dealt
into K folds, stratified by grade and grouped by patient (scikit-learn's ``StratifiedKFold``,
or ``StratifiedGroupKFold`` with patients, shuffled with the seed); validation is fold
``data.cv_fold``. Every image is in exactly one fold.
"""

from __future__ import annotations

import csv
import io
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import NamedTuple, Protocol

import numpy as np

from drsearch.data.records import ImageRecord
from drsearch.errors import DataError
from drsearch.io import write_text_atomic


class DataConfigLike(Protocol):
    val_fraction: float
    test_fraction: float
    seed: int
    cv_folds: int | None
    cv_fold: int


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
    records: Sequence[ImageRecord],
    val_fraction: float,
    seed: int,
    test_fraction: float = 0.0,
    cv: tuple[int, int] | None = None,
) -> Sides:
    """The train/validation/test split of ``records``; with ``cv`` = (folds, fold), validation
    is that fold of the non-test images (``val_fraction`` is then not used).

    Records whose ``use`` is ``train``, ``val`` or ``test`` go there; the others are split.
    """
    test = held_out_indices(records, test_fraction, seed)
    rest = np.setdiff1d(np.arange(len(records)), test)
    kept = [records[i] for i in rest]
    share = val_share(val_fraction, test_fraction)
    is_val = np.array([r.use == "val" for r in kept], dtype=bool)
    free = np.flatnonzero([r.use == "split" for r in kept])
    if len(free) and cv is not None:
        folds = cv_folds([kept[i] for i in free], cv[0], seed)
        is_val[free[folds[cv[1]]]] = True
    elif len(free):
        is_val[free[_carve([kept[i] for i in free], share, seed, "val")]] = True
    train_idx, val_idx = rest[~is_val], rest[is_val]
    if len(train_idx) == 0 or len(val_idx) == 0:
        raise DataError(
            f"data.val_fraction: {val_fraction} leaves {len(train_idx)} training and "
            f"{len(val_idx)} validation images from {len(records)}; use more images"
        )
    return Sides(train_idx, val_idx, test)


def data_split(records: Sequence[ImageRecord], data: DataConfigLike) -> Sides:
    """``split_indices`` as a recipe's ``data`` section asks for it."""
    cv = (data.cv_folds, data.cv_fold) if data.cv_folds else None
    return split_indices(records, data.val_fraction, data.seed, data.test_fraction, cv)


def cv_folds(subset: Sequence[ImageRecord], k: int, seed: int) -> list[np.ndarray]:
    """``k`` folds (sorted indices into ``subset``) that partition it: stratified by grade,
    grouped by patient when patients are known, shuffled with ``seed``."""
    from sklearn.model_selection import StratifiedGroupKFold, StratifiedKFold

    labels = np.array([r.label for r in subset])
    if len(subset) < k:
        raise DataError(f"data.cv_folds: {k} folds need at least {k} images, got {len(subset)}")
    x = np.zeros(len(labels))
    with warnings.catch_warnings():
        # a grade rarer than k images cannot be in every fold; the folds still partition
        warnings.filterwarnings("ignore", "The least populated class", UserWarning)
        if any(r.patient_id for r in subset):
            groups = [r.patient_id or f"__image__{r.id}" for r in subset]
            if len(set(groups)) < k:
                raise DataError(
                    f"data.cv_folds: {k} folds need at least {k} patients, got {len(set(groups))}"
                )
            splitter = StratifiedGroupKFold(n_splits=k, shuffle=True, random_state=seed)
            parts = [val for _, val in splitter.split(x, labels, groups)]
        else:
            splitter = StratifiedKFold(n_splits=k, shuffle=True, random_state=seed)
            parts = [val for _, val in splitter.split(x, labels)]
    return [np.sort(p) for p in parts]


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
    """Whole patients carved, stratified by each patient's worst grade: within each stratum
    (patients shuffled with ``seed``) a patient is taken while that brings the carved images
    closer to ``round(images of the stratum * fraction)``; a stratum of two or more patients
    gives at least one and keeps at least one."""
    by_patient: dict[str, list[int]] = {}
    for i, g in enumerate(groups):
        by_patient.setdefault(g, []).append(i)
    patients = sorted(by_patient)
    if len(patients) < 2:
        raise DataError(
            f"data.{side}_fraction: {fraction:.3g} needs at least 2 patients to keep each "
            f"patient on one side, got {len(patients)}"
        )
    worst = {p: int(labels[by_patient[p]].max()) for p in patients}
    rng = np.random.default_rng(seed)
    chosen: list[int] = []
    for grade in sorted(set(worst.values())):
        members = [p for p in patients if worst[p] == grade]
        members = [members[i] for i in rng.permutation(len(members))]
        target = round(sum(len(by_patient[p]) for p in members) * fraction)
        taken, picked = 0, []
        for p in members:
            size = len(by_patient[p])
            if abs(taken + size - target) < abs(taken - target):
                picked.append(p)
                taken += size
        if len(members) >= 2 and not picked:
            picked = members[:1]
        if len(members) >= 2 and len(picked) == len(members):
            picked = picked[:-1]
        for p in picked:
            chosen.extend(by_patient[p])
    return np.sort(np.array(chosen, dtype=int))


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
