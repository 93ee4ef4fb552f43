"""From a recipe's ``data`` section to cached, split images ready for training."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from drsearch.config.recipe import DataConfig
from drsearch.data.cache import ImageCache, build_cache, default_cache_dir
from drsearch.data.content import content_ids, cross_split_duplicates
from drsearch.data.records import ImageRecord, Skipped
from drsearch.data.sources import load_records
from drsearch.data.split import held_out_indices, split_indices, val_share
from drsearch.train.batches import Split


@dataclass
class PreparedData:
    """Records, their split, and decoded pixels at every size the run uses."""

    records: list[ImageRecord]
    train_idx: np.ndarray  # into ``records``
    val_idx: np.ndarray
    cache: ImageCache
    skipped: Skipped
    cache_rows: np.ndarray  # row of each record in the cache arrays
    val_duplicates: int = 0  # validation images whose exact file content is also in training
    #: ids of the held-out test images, for the fingerprint only: their pixels and labels
    #: never reach a run
    test_ids: list[str] = field(default_factory=list)

    def split(self, side: str, size: int) -> Split:
        idx = self.train_idx if side == "train" else self.val_idx
        labels = np.array([self.records[i].label for i in idx], dtype=np.int64)
        return Split(self.cache.arrays[size], self.cache_rows[idx], labels)

    def labels(self, side: str) -> np.ndarray:
        idx = self.train_idx if side == "train" else self.val_idx
        return np.array([self.records[i].label for i in idx], dtype=np.int64)

    def ids(self, side: str) -> list[str]:
        idx = self.train_idx if side == "train" else self.val_idx
        return [self.records[i].id for i in idx]


def prepare_data(
    cfg: DataConfig, progress: Callable[[int, int], None] | None = None
) -> PreparedData:
    """Read labels, hold out the test side, decode every other image once, drop unusable
    ones, split the rest by grade/patient."""
    skipped = Skipped()
    loaded = load_records(cfg, skipped)
    test = held_out_indices(loaded, cfg.test_fraction, cfg.seed)
    held_out = set(test.tolist())
    all_records = [r for i, r in enumerate(loaded) if i not in held_out]
    # content ids once: they key the disk cache and find train/validation duplicates
    all_ids = content_ids(all_records, cfg.cache_dir or default_cache_dir())
    cache = build_cache(
        all_records,
        cfg.sizes(),
        cfg.cache,
        cfg.cache_max_gb,
        cfg.cache_dir,
        cfg.skip_bad,
        skipped,
        progress,
        cfg.preprocess,
        all_ids,
    )
    rows = np.flatnonzero(cache.usable)
    records = [all_records[i] for i in rows]
    cv = (cfg.cv_folds, cfg.cv_fold) if cfg.cv_folds else None
    train_idx, val_idx, _ = split_indices(
        records, val_share(cfg.val_fraction, cfg.test_fraction), cfg.seed, cv=cv
    )
    ids = [all_ids[i] for i in rows]
    duplicates = cross_split_duplicates(ids, train_idx, val_idx)
    if duplicates and cfg.drop_val_duplicates:
        for i in duplicates:
            skipped.add(
                "duplicate of a training image (removed from validation)", f"{records[i].path}"
            )
        val_idx = np.setdiff1d(val_idx, duplicates)
    data = PreparedData(records, train_idx, val_idx, cache, skipped, rows)
    data.test_ids = [loaded[i].id for i in test]
    data.val_duplicates = len(duplicates)
    return data
