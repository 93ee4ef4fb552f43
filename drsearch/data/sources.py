"""Label tables -> image records, for each dataset layout a recipe can name.

A record is one image: id, file path, ICDR grade and (when the layout has one) patient.
Problems name the file and row; with ``skip_bad`` they are skipped and counted instead.
"""

from __future__ import annotations

import csv
import os
import shutil
import tempfile
from collections import Counter
from dataclasses import dataclass, field, replace
from pathlib import Path

from drsearch import NUM_CLASSES
from drsearch.config.recipe import DataConfig
from drsearch.data.synth import write_synthetic_dataset
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


def load_records(cfg: DataConfig, skipped: Skipped) -> list[ImageRecord]:
    """Read the label table named by ``cfg``; check labels and that every image exists.

    With ``data.sources``, every source is read and its records are tagged with the source
    name (also prefixed to ids and patients, so they never collide) and its ``use``.
    """
    if cfg.sources:
        return _combined(cfg, skipped)
    if cfg.kind == "synthetic":
        ensure_synthetic(cfg)
    if cfg.kind in ("synthetic", "aptos2019"):
        records = _aptos(cfg.root, cfg.skip_bad, skipped)
    elif cfg.kind == "csv":
        assert cfg.csv is not None  # guaranteed by Recipe validation
        records = _generic_csv(cfg.csv, cfg.skip_bad, skipped)
    else:
        from drsearch.data.adapters import ADAPTERS

        records = ADAPTERS[cfg.kind](cfg, skipped)
    if not records:
        raise DataError(f"{_table_path(cfg)}: no usable images")
    return records


def _combined(cfg: DataConfig, skipped: Skipped) -> list[ImageRecord]:
    out: list[ImageRecord] = []
    for source in cfg.sources:
        name = source.name or source.kind
        single = cfg.model_copy(
            update={"kind": source.kind, "root": source.root, "csv": source.csv, "sources": []}
        )
        for r in load_records(single, skipped):
            patient = f"{name}:{r.patient_id}" if r.patient_id else None
            out.append(
                replace(r, id=f"{name}:{r.id}", patient_id=patient, source=name, use=source.use)
            )
    return out


def ensure_synthetic(cfg: DataConfig) -> None:
    """Generate the synthetic set into ``data.root`` on first use.

    The set is written into a private folder beside ``root`` and renamed into place, so a
    concurrent reader (another runner's trial) never sees a half-written image; when two
    processes race, the first rename wins and the other's copy is removed.
    """
    if (cfg.root / "train.csv").is_file():
        return
    s = cfg.synthetic
    if cfg.root.exists():  # a folder the user made: fill it in place
        write_synthetic_dataset(cfg.root, n=s.n, size=s.size, seed=s.seed, imbalance=s.imbalance)
        return
    cfg.root.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{cfg.root.name}.partial-", dir=cfg.root.parent))
    try:
        write_synthetic_dataset(tmp, n=s.n, size=s.size, seed=s.seed, imbalance=s.imbalance)
        os.rename(tmp, cfg.root)
    except OSError:
        if not (cfg.root / "train.csv").is_file():
            raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _table_path(cfg: DataConfig) -> Path:
    if cfg.kind == "csv" and cfg.csv is not None:
        return cfg.csv
    return cfg.root if cfg.kind not in ("synthetic", "aptos2019") else cfg.root / "train.csv"


def _aptos(root: Path, skip_bad: bool, skipped: Skipped) -> list[ImageRecord]:
    """APTOS 2019: ``train.csv`` (``id_code,diagnosis``) and ``train_images/<id>.png``."""
    table = root / "train.csv"
    rows = read_table(table, ("id_code", "diagnosis"), "data.root")
    records = []
    for line, row in rows:
        image_id = row["id_code"].strip()
        path = root / "train_images" / f"{image_id}.png"
        record = checked_record(
            table, line, image_id, path, row["diagnosis"], None, skip_bad, skipped
        )
        if record:
            records.append(record)
    return records


def _generic_csv(table: Path, skip_bad: bool, skipped: Skipped) -> list[ImageRecord]:
    """``path,label[,patient_id]``; relative paths are relative to the CSV's folder."""
    rows = read_table(table, ("path", "label"), "data.csv")
    records = []
    for line, row in rows:
        rel = row["path"].strip()
        path = Path(rel) if Path(rel).is_absolute() else table.parent / rel
        patient = (row.get("patient_id") or "").strip() or None
        record = checked_record(table, line, rel, path, row["label"], patient, skip_bad, skipped)
        if record:
            records.append(record)
    return records


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
