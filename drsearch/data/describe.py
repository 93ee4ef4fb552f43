"""``drsearch data describe``: what a recipe's dataset holds, before paying for training.

Counts per grade and split, patients, image sizes (read from file headers by ``decode.py``,
no decoding), unreadable files with the reason, rows skipped by the adapter, and exact
duplicate files (same bytes), with those that straddle the train/validation split called
out: they inflate validation metrics.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from drsearch import NUM_CLASSES
from drsearch.config.recipe import DataConfig
from drsearch.data.content import file_sha1
from drsearch.data.decode import ImageError, image_size
from drsearch.data.records import Skipped
from drsearch.data.sources import load_records
from drsearch.data.split import data_split
from drsearch.fmt import filename


@dataclass
class DatasetSummary:
    n_images: int
    grade_counts: dict[str, list[int]]  # split -> count per grade
    n_patients: int | None
    sizes: dict[str, tuple[int, int]]  # "min", "median", "max" -> (width, height)
    unreadable: list[str]
    skipped: dict[str, int]
    duplicate_groups: list[list[str]]  # ids with identical bytes
    cross_split_duplicates: list[list[str]] = field(default_factory=list)


def describe_dataset(cfg: DataConfig) -> DatasetSummary:
    skipped = Skipped()
    records = load_records(cfg.model_copy(update={"skip_bad": True}), skipped)
    sides = data_split(records, cfg)
    side = {int(i): name for name, idx in sides._asdict().items() for i in idx}
    counts = {s: [0] * NUM_CLASSES for s in ("train", "val", "test")}
    for i, r in enumerate(records):
        counts[side[i]][r.label] += 1
    sizes, unreadable, by_hash = [], [], defaultdict(list)
    for i, r in enumerate(records):
        try:
            sizes.append(image_size(r.path))
        except ImageError as exc:
            unreadable.append(f"{filename(r.path)} ({exc})")
        by_hash[_sha1(r.path)].append(i)
    groups = [idx for idx in by_hash.values() if len(idx) > 1]
    patients = {r.patient_id for r in records if r.patient_id}
    return DatasetSummary(
        n_images=len(records),
        grade_counts={
            "all": np.sum(list(counts.values()), axis=0).tolist(),
            **{k: v for k, v in counts.items() if k != "test" or any(v)},
        },
        n_patients=len(patients) if patients else None,
        sizes=_size_stats(sizes),
        unreadable=unreadable,
        skipped=dict(Counter(skipped.reasons)),
        duplicate_groups=[[records[i].id for i in g] for g in groups],
        cross_split_duplicates=[
            [records[i].id for i in g] for g in groups if len({side[i] for i in g}) > 1
        ],
    )


def _sha1(path: Path) -> str:
    """The SHA-1 of the file's bytes (a file that cannot be read: its name)."""
    try:
        return file_sha1(path)
    except (OSError, ImageError):
        return f"unreadable:{path}"


def _size_stats(sizes: list[tuple[int, int]]) -> dict[str, tuple[int, int]]:
    if not sizes:
        return {}
    areas = sorted(sizes, key=lambda s: s[0] * s[1])
    return {"min": areas[0], "median": areas[len(areas) // 2], "max": areas[-1]}
