"""A fingerprint of the data a run saw: the image list (ids, labels, file sizes) and the split.

Two runs with equal fingerprints trained and validated on the same files with the same labels
and the same split; a pinned recipe carries its trial's fingerprint so a retrain can tell.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence

import numpy as np

from drsearch.data.records import ImageRecord


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
