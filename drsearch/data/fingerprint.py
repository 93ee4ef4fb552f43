"""A fingerprint of the data a run saw: the image list (ids, labels, file sizes) and the split.

Two runs with equal fingerprints trained and validated on the same files with the same labels
and the same split; a pinned recipe carries its trial's fingerprint so a retrain can tell, and
a study stores the fingerprint of its data as listed (``listed_fingerprint``) with its
definition, so a continuation on other data is refused.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence

import numpy as np

from drsearch import NUM_CLASSES
from drsearch.data.records import ImageRecord
from drsearch.data.split import Sides


def ids_sha256(ids: Iterable[str]) -> str:
    """SHA-256 of the sorted image ids, one per line: the fingerprint of one side of a split."""
    digest = hashlib.sha256()
    for image_id in sorted(ids):
        digest.update(f"{image_id}\n".encode())
    return digest.hexdigest()


def data_fingerprint(
    records: Sequence[ImageRecord],
    train_idx: np.ndarray,
    val_idx: np.ndarray,
    test_ids: Sequence[str] = (),
) -> dict[str, object]:
    """SHA-256 of ``id,label,size`` per training or validation image (sorted by id), of the
    validation ids and of the held-out test ids (ids only: a run never reads test labels)."""
    images = hashlib.sha256()
    for r in sorted(records, key=lambda r: r.id):
        images.update(f"{r.id}\t{r.label}\t{r.path.stat().st_size}\n".encode())
    return {
        "images_sha256": images.hexdigest(),
        "split_sha256": ids_sha256(records[i].id for i in val_idx),
        "test_sha256": ids_sha256(test_ids),
        "n_images": len(records),
        "n_train": int(len(train_idx)),
        "n_val": int(len(val_idx)),
        "n_test": len(test_ids),
    }


def listed_fingerprint(records: Sequence[ImageRecord], sides: Sides) -> dict[str, object]:
    """``data_fingerprint`` of the images a run of this split trains and validates on, as they
    are listed (no image decoded; a run that drops an unreadable one records one fewer), and
    their grade counts: what a pinned recipe's data and a study's stored data are compared by.
    Ids, labels and file sizes, never paths: a copy of the data in another folder is equal."""
    kept = np.union1d(sides.train, sides.val)  # sorted: the run's records, test left out
    out = data_fingerprint(
        [records[i] for i in kept],
        np.searchsorted(kept, sides.train),
        np.searchsorted(kept, sides.val),
        [records[i].id for i in sides.test],
    )
    out["grade_counts"] = np.bincount(
        [records[i].label for i in kept], minlength=NUM_CLASSES
    ).tolist()
    return out
