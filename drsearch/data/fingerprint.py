"""A fingerprint of the data a run saw: the image list (ids, labels, file sizes) and the split.

Two runs with equal fingerprints trained and validated on the same files with the same labels
and the same split; a pinned recipe carries its trial's fingerprint so a retrain can tell.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

import numpy as np

from drsearch.data.records import ImageRecord


def data_fingerprint(
    records: Sequence[ImageRecord], train_idx: np.ndarray, val_idx: np.ndarray
) -> dict[str, object]:
    """SHA-256 of ``id,label,size`` per image (sorted by id) and of the validation ids."""
    images = hashlib.sha256()
    for r in sorted(records, key=lambda r: r.id):
        images.update(f"{r.id}\t{r.label}\t{r.path.stat().st_size}\n".encode())
    split = hashlib.sha256()
    for image_id in sorted(records[i].id for i in val_idx):
        split.update(f"{image_id}\n".encode())
    return {
        "images_sha256": images.hexdigest(),
        "split_sha256": split.hexdigest(),
        "n_images": len(records),
        "n_train": int(len(train_idx)),
        "n_val": int(len(val_idx)),
    }
