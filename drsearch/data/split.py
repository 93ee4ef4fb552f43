"""Train/validation split: stratified by grade, grouped by patient when patients are known.

Deterministic for a seed. Without patients, each grade contributes
``round(n_grade * val_fraction)`` images to validation (at least one when the grade has two
or more). With patients, sklearn's ``StratifiedGroupKFold`` with ``round(1 / val_fraction)``
folds keeps every patient's images on one side; its first fold is the validation set.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from drsearch.data.records import ImageRecord
from drsearch.errors import DataError
from drsearch.io import write_text_atomic


def split_indices(
    records: Sequence[ImageRecord], val_fraction: float, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """Indices of the training and validation records, each sorted.

    Records whose ``use`` is ``train`` or ``val`` go there; the others are split.
    """
    is_val = np.array([r.use == "val" for r in records], dtype=bool)
    free = np.flatnonzero([r.use == "split" for r in records])
    if len(free):
        subset = [records[i] for i in free]
        labels = np.array([r.label for r in subset])
        if any(r.patient_id for r in subset):
            groups = [r.patient_id or f"__image__{r.id}" for r in subset]
            val = _grouped(labels, groups, val_fraction, seed)
        else:
            val = _stratified(labels, val_fraction, seed)
        is_val[free[val]] = True
    train_idx, val_idx = np.flatnonzero(~is_val), np.flatnonzero(is_val)
    if len(train_idx) == 0 or len(val_idx) == 0:
        raise DataError(
            f"data.val_fraction: {val_fraction} leaves {len(train_idx)} training and "
            f"{len(val_idx)} validation images from {len(records)}; use more images"
        )
    return train_idx, val_idx


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


def _grouped(labels: np.ndarray, groups: list[str], val_fraction: float, seed: int) -> np.ndarray:
    n_folds = max(2, int(round(1 / val_fraction)))
    n_groups = len(set(groups))
    if n_groups < n_folds:
        raise DataError(
            f"data.val_fraction: {val_fraction} needs at least {n_folds} patients, got {n_groups}"
        )
    from sklearn.model_selection import StratifiedGroupKFold  # slow to import: only here

    folds = StratifiedGroupKFold(n_splits=n_folds, shuffle=True, random_state=seed)
    _, val = next(folds.split(np.zeros(len(labels)), labels, groups))
    return val


def write_split(
    path: Path, records: Sequence[ImageRecord], train_idx: np.ndarray, val_idx: np.ndarray
) -> None:
    """Record the split as ``split.csv`` (``id,split,patient_id,label,source``), atomically."""
    side = {int(i): "train" for i in train_idx} | {int(i): "val" for i in val_idx}
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(["id", "split", "patient_id", "label", "source"])
    for i in sorted(side):
        r = records[i]
        writer.writerow([r.id, side[i], r.patient_id or "", r.label, r.source or ""])
    write_text_atomic(path, out.getvalue())
