"""Every dataset layout a recipe can name, in one registry (``ADAPTERS``), read as distributed.

- ``aptos2019`` (and ``synthetic``, generated in that layout): ``train.csv``
  (``id_code,diagnosis``) and ``train_images/<id>.png``.
- ``csv``: ``data.csv`` names a file with ``path,label[,patient_id]`` (paths relative to it).

- ``eyepacs`` (Kaggle 2015): ``trainLabels.csv`` (``image,level``), ``<patient>_<left|right>.jpeg``
  under ``train/`` (or the root). The patient is the name before ``_``, so both eyes of a
  patient always land on the same side of the split.
- ``idrid`` (disease grading): ``root`` is the ``B. Disease Grading`` folder. The label CSVs
  have a header with a trailing space (``Risk of macular edema ``) and sometimes empty extra
  columns; image names have no extension; ``IDRiD_001``.. exist in both the training and the
  testing set, so ids are qualified by set (``train/IDRiD_001``).
- ``ddr``: ``root`` is ``DR_grading`` with ``{train,valid,test}/`` and ``{split}.txt``
  (``filename label``). Label 5 means ungradable: such images are dropped and counted.
- ``messidor2``: the adjudicated-grades CSV (``image_id,adjudicated_dr_grade,...``) and images
  under ``IMAGES/`` (or the root); rows without a grade are dropped and counted.
- ``folder``: one sub-folder per grade, ``root/0/*.png`` .. ``root/4/*.jpg``."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from drsearch import NUM_CLASSES
from drsearch.config.recipe import DataConfig
from drsearch.data.records import ImageRecord, Skipped, checked_record, read_table
from drsearch.errors import DataError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp")


Adapter = Callable[[DataConfig, Skipped], list[ImageRecord]]


def aptos2019(cfg: DataConfig, skipped: Skipped) -> list[ImageRecord]:
    """APTOS 2019: ``train.csv`` (``id_code,diagnosis``) and ``train_images/<id>.png``."""
    root, skip_bad = cfg.root, cfg.skip_bad
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


def generic_csv(cfg: DataConfig, skipped: Skipped) -> list[ImageRecord]:
    """``path,label[,patient_id]``; relative paths are relative to the CSV's folder."""
    assert cfg.csv is not None  # guaranteed by Recipe validation
    table, skip_bad = cfg.csv, cfg.skip_bad
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


def _first_dir(*candidates: Path) -> Path:
    return next((c for c in candidates if c.is_dir()), candidates[-1])


def eyepacs_patient(name: str) -> str:
    """``10003_left`` -> ``10003``: the patient of an EyePACS image name."""
    return name.rsplit("_", 1)[0] if "_" in name else name


def eyepacs(cfg: DataConfig, skipped: Skipped) -> list[ImageRecord]:
    table = cfg.csv or cfg.root / "trainLabels.csv"
    images = _first_dir(cfg.root / "train", cfg.root)
    records = []
    for line, row in read_table(table, ("image", "level"), "data.root (or data.csv)"):
        name = row["image"].strip()
        patient = eyepacs_patient(name)
        path = _with_suffix(images / name, (".jpeg", ".jpg", ".png"))
        rec = checked_record(table, line, name, path, row["level"], patient, cfg.skip_bad, skipped)
        if rec:
            records.append(rec)
    return records


def idrid(cfg: DataConfig, skipped: Skipped) -> list[ImageRecord]:
    truth = _first_dir(cfg.root / "2. Groundtruths", cfg.root)
    originals = _first_dir(cfg.root / "1. Original Images", cfg.root)
    sets = (
        ("train", "a. IDRiD_Disease Grading_Training Labels.csv", "a. Training Set"),
        ("test", "b. IDRiD_Disease Grading_Testing Labels.csv", "b. Testing Set"),
    )
    records = []
    for qualifier, table_name, folder in sets:
        table = truth / table_name
        if not table.is_file():
            continue
        for line, row in read_table(table, ("Image name", "Retinopathy grade"), "data.root"):
            name = row["Image name"].strip()
            if not name:
                continue  # trailing empty rows
            path = _with_suffix(originals / folder / name, (".jpg", ".jpeg", ".png", ".tif"))
            rec = checked_record(
                table,
                line,
                f"{qualifier}/{name}",
                path,
                row["Retinopathy grade"],
                None,
                cfg.skip_bad,
                skipped,
            )
            if rec:
                records.append(rec)
    if not records and not any((truth / t).is_file() for _, t, _ in sets):
        raise DataError(
            f"{truth}: no IDRiD grading label files found; data.root must be the "
            "'B. Disease Grading' folder"
        )
    return records


def ddr(cfg: DataConfig, skipped: Skipped) -> list[ImageRecord]:
    records = []
    found = False
    for split in ("train", "valid", "test"):
        table = cfg.root / f"{split}.txt"
        if not table.is_file():
            continue
        found = True
        for line, text in enumerate(table.read_text().splitlines(), start=1):
            parts = text.split()
            if not parts:
                continue
            if len(parts) != 2:
                raise DataError(f"{table}:{line}: expected 'filename label', got {text!r}")
            name, label = parts
            if label.strip() == "5":
                skipped.add("ungradable (DDR label 5)", f"{table}:{line}: {name}")
                continue
            rec = checked_record(
                table,
                line,
                f"{split}/{name}",
                cfg.root / split / name,
                label,
                None,
                cfg.skip_bad,
                skipped,
            )
            if rec:
                records.append(rec)
    if not found:
        raise DataError(
            f"{cfg.root}: no train.txt/valid.txt/test.txt; data.root must be the "
            "DDR 'DR_grading' folder"
        )
    return records


def messidor2(cfg: DataConfig, skipped: Skipped) -> list[ImageRecord]:
    table = cfg.csv or cfg.root / "messidor_data.csv"
    images = _first_dir(cfg.root / "IMAGES", cfg.root)
    records = []
    for line, row in read_table(
        table, ("image_id", "adjudicated_dr_grade"), "data.root (or data.csv)"
    ):
        name, grade = row["image_id"].strip(), row["adjudicated_dr_grade"].strip()
        if not grade:
            skipped.add("no adjudicated grade (Messidor-2)", f"{table}:{line}: {name}")
            continue
        rec = checked_record(table, line, name, images / name, grade, None, cfg.skip_bad, skipped)
        if rec:
            records.append(rec)
    return records


def folder(cfg: DataConfig, skipped: Skipped) -> list[ImageRecord]:
    if not cfg.root.is_dir():
        raise DataError(f"{cfg.root}: folder not found; check data.root in the recipe")
    records = []
    for grade in range(NUM_CLASSES):
        sub = cfg.root / str(grade)
        for path in sorted(sub.iterdir()) if sub.is_dir() else []:
            if path.suffix.lower() in IMAGE_SUFFIXES:
                records.append(ImageRecord(f"{grade}/{path.name}", path, grade))
    extra = [
        p.name
        for p in cfg.root.iterdir()
        if p.is_dir() and p.name not in {str(g) for g in range(NUM_CLASSES)}
    ]
    if extra:
        raise DataError(
            f"{cfg.root}: sub-folder(s) {', '.join(sorted(extra))} are not grades "
            f"0-{NUM_CLASSES - 1}; one folder per grade is expected"
        )
    return records


def _with_suffix(stem: Path, suffixes: tuple[str, ...]) -> Path:
    """The file for a name given with or without its extension (first that exists)."""
    if stem.suffix.lower() in IMAGE_SUFFIXES:
        return stem
    for suffix in suffixes:
        candidate = stem.with_name(stem.name + suffix)
        if candidate.is_file():
            return candidate
    return stem.with_name(stem.name + suffixes[0])


#: What each layout's folder holds and where to get it, for a missing-data message.
LAYOUTS = {
    "aptos2019": "APTOS 2019: train.csv (id_code,diagnosis) and train_images/<id_code>.png, as "
    "Kaggle's aptos2019-blindness-detection download unpacks (kaggle competitions download -c "
    "aptos2019-blindness-detection)",
    "synthetic": "generated synthetic fundus images (made on first use)",
    "csv": "a CSV file with path,label[,patient_id] columns, image paths relative to it",
    "eyepacs": "EyePACS (Kaggle 2015): trainLabels.csv (image,level) and train/<patient>_<eye>"
    ".jpeg (kaggle competitions download -c diabetic-retinopathy-detection)",
    "idrid": "IDRiD's 'B. Disease Grading' folder (1. Original Images/, 2. Groundtruths/), from "
    "IEEE DataPort",
    "ddr": "DDR's DR_grading folder: train/ valid/ test/ and train.txt valid.txt test.txt "
    "(filename label)",
    "messidor2": "Messidor-2: the adjudicated-grades CSV and IMAGES/ (from ADCIS, with the "
    "Krause et al. adjudicated grades)",
    "folder": "one sub-folder per grade: 0/ 1/ 2/ 3/ 4/ with the images",
}


ADAPTERS: dict[str, Adapter] = {
    "synthetic": aptos2019,
    "aptos2019": aptos2019,
    "csv": generic_csv,
    "eyepacs": eyepacs,
    "idrid": idrid,
    "ddr": ddr,
    "messidor2": messidor2,
    "folder": folder,
}
