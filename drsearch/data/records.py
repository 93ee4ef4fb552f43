"""Image records: one labelled image each, what was skipped, and the checks every layout shares.

Problems name the file and row; with ``skip_bad`` they are skipped and counted instead."""

from __future__ import annotations

import csv
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from drsearch import NUM_CLASSES
from drsearch.errors import DataError


@dataclass(frozen=True)
class ImageRecord:
    """One labelled image."""

    id: str
    path: Path
    label: int
    patient_id: str | None = None
    source: str | None = None  # the dataset it came from, when several are combined
    use: str = "split"  # "split" (train or val by the split), "train" or "val"


@dataclass
class Skipped:
    """Rows left out because of ``data.skip_bad``, counted by reason."""

    reasons: Counter[str] = field(default_factory=Counter)
    examples: list[str] = field(default_factory=list)

    def add(self, reason: str, example: str) -> None:
        self.reasons[reason] += 1
        if len(self.examples) < 5:
            self.examples.append(example)

    @property
    def total(self) -> int:
        return sum(self.reasons.values())


def read_table(
    table: Path, required: tuple[str, ...], key: str
) -> list[tuple[int, dict[str, str]]]:
    if not table.is_file():
        raise DataError(f"{table}: label file not found; check {key} in the recipe")
    with table.open(newline="") as fh:
        reader = csv.DictReader(fh)
        header = [h.strip() for h in reader.fieldnames or []]
        missing = [c for c in required if c not in header]
        if missing:
            raise DataError(
                f"{table}: missing column(s) {', '.join(missing)}; the header must have "
                f"{', '.join(required)}, got {', '.join(header) or 'nothing'}"
            )
        return [
            (i + 2, {(k or "").strip(): (v or "") for k, v in row.items()})
            for i, row in enumerate(reader)
        ]


def checked_record(
    table: Path,
    line: int,
    image_id: str,
    path: Path,
    raw_label: str,
    patient: str | None,
    skip_bad: bool,
    skipped: Skipped,
) -> ImageRecord | None:
    problem = None
    label = _grade(raw_label)
    if label is None:
        problem = ("bad label", f"label {raw_label.strip()!r} is not a grade 0-{NUM_CLASSES - 1}")
    elif not path.is_file():
        problem = ("missing image", f"image {path} not found")
    if problem is None:
        return ImageRecord(image_id, path, int(label), patient)  # type: ignore[arg-type]
    where = f"{table}:{line}: {problem[1]}"
    if not skip_bad:
        raise DataError(f"{where} (set data.skip_bad: true to skip such rows)")
    skipped.add(problem[0], where)
    return None


def _grade(raw: str) -> int | None:
    try:
        value = float(raw.strip())
    except ValueError:
        return None
    if not value.is_integer() or not 0 <= value < NUM_CLASSES:
        return None
    return int(value)
