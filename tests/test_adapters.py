"""Dataset adapters on tiny on-disk replicas of each real layout, quirks included."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from drsearch.config.recipe import DataConfig
from drsearch.data.records import Skipped
from drsearch.data.sources import load_records
from drsearch.data.split import split_indices
from drsearch.errors import DataError


def image(path: Path, seed: int = 0) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.random.default_rng(seed).integers(0, 255, (16, 16, 3), dtype=np.uint8)
    cv2.imwrite(str(path), pixels)


def records(kind: str, root: Path, **extra: object) -> tuple[list, Skipped]:
    skipped = Skipped()
    return load_records(DataConfig(kind=kind, root=root, **extra), skipped), skipped


def test_eyepacs_groups_both_eyes_of_a_patient(tmp_path: Path) -> None:
    rows = ["image,level"]
    for p in range(60):
        for eye in ("left", "right"):
            name = f"{100 + p}_{eye}"
            image(tmp_path / "train" / f"{name}.jpeg", p)
            rows.append(f"{name},{(p * 7) % 5 if eye == 'left' else (p * 3) % 5}")
    (tmp_path / "trainLabels.csv").write_text("\n".join(rows) + "\n")
    got, _ = records("eyepacs", tmp_path)
    assert len(got) == 120 and got[0].patient_id == "100" and got[0].path.suffix == ".jpeg"
    train, val, _ = split_indices(got, 0.2, seed=0)
    assert not {got[i].patient_id for i in train} & {got[i].patient_id for i in val}


def test_idrid_header_quirks_and_ids_qualified_by_set(tmp_path: Path) -> None:
    root = tmp_path / "B. Disease Grading"
    truth = root / "2. Groundtruths"
    truth.mkdir(parents=True)
    header = "Image name,Retinopathy grade,Risk of macular edema ,,,\n"
    for _set, table, folder in (
        ("train", "a. IDRiD_Disease Grading_Training Labels.csv", "a. Training Set"),
        ("test", "b. IDRiD_Disease Grading_Testing Labels.csv", "b. Testing Set"),
    ):
        lines = [f"IDRiD_{i:03d},{i % 5},0,,," for i in range(1, 6)]
        (truth / table).write_text(header + "\n".join(lines) + "\n,,,,,\n")
        for i in range(1, 6):
            image(root / "1. Original Images" / folder / f"IDRiD_{i:03d}.jpg", i)
    got, _ = records("idrid", root)
    ids = [r.id for r in got]
    assert len(ids) == 10 and len(set(ids)) == 10
    assert "train/IDRiD_001" in ids and "test/IDRiD_001" in ids
    assert {r.label for r in got} == {0, 1, 2, 3, 4}


def test_ddr_drops_ungradable_and_counts_it(tmp_path: Path) -> None:
    for split, labels in (("train", [0, 1, 5, 2]), ("valid", [3, 5]), ("test", [4])):
        lines = []
        for i, label in enumerate(labels):
            name = f"{split}_{i}.jpg"
            image(tmp_path / split / name, i)
            lines.append(f"{name} {label}")
        (tmp_path / f"{split}.txt").write_text("\n".join(lines) + "\n")
    got, skipped = records("ddr", tmp_path)
    assert len(got) == 5 and {r.label for r in got} == {0, 1, 2, 3, 4}
    assert skipped.reasons == {"ungradable (DDR label 5)": 2}
    assert got[0].id == "train/train_0.jpg"


def test_messidor2_drops_rows_without_grade(tmp_path: Path) -> None:
    rows = ["image_id,adjudicated_dr_grade,adjudicated_dme,adjudicated_gradable"]
    for i, grade in enumerate(["0", "1", "", "4", ""]):
        image(tmp_path / "IMAGES" / f"20051020_{i}.png", i)
        rows.append(f"20051020_{i}.png,{grade},0,{0 if grade == '' else 1}")
    (tmp_path / "messidor_data.csv").write_text("\n".join(rows) + "\n")
    got, skipped = records("messidor2", tmp_path)
    assert [r.label for r in got] == [0, 1, 4]
    assert skipped.reasons == {"no adjudicated grade (Messidor-2)": 2}


def test_folder_per_grade(tmp_path: Path) -> None:
    for grade in range(5):
        image(tmp_path / str(grade) / f"a{grade}.png", grade)
    (tmp_path / "2" / "notes.txt").write_text("not an image")
    got, _ = records("folder", tmp_path)
    assert [(r.id, r.label) for r in got] == [(f"{g}/a{g}.png", g) for g in range(5)]
    (tmp_path / "ungradable").mkdir()
    with pytest.raises(DataError, match="ungradable are not grades 0-4"):
        records("folder", tmp_path)


@pytest.mark.parametrize(
    ("kind", "message"),
    [
        ("eyepacs", "trainLabels.csv: label file not found"),
        ("idrid", "no IDRiD grading label files found"),
        ("ddr", "no train.txt/valid.txt/test.txt"),
        ("messidor2", "messidor_data.csv: label file not found"),
        ("folder", "folder not found"),
    ],
)
def test_missing_dataset_is_a_clear_error(tmp_path: Path, kind: str, message: str) -> None:
    root = tmp_path / "empty"
    if kind != "folder":
        root.mkdir()
    with pytest.raises(DataError, match=message):
        records(kind, root)


def _eyepacs(tmp_path: Path, patients: int = 40) -> Path:
    rows = ["image,level"]
    for p in range(patients):
        for eye in ("left", "right"):
            name = f"{p}_{eye}"
            image(tmp_path / "train" / f"{name}.jpeg", p * 2 + (eye == "right"))
            rows.append(f"{name},{p % 5}")
    (tmp_path / "trainLabels.csv").write_text("\n".join(rows) + "\n")
    return tmp_path


def test_describe_counts_duplicates_and_unreadable(tmp_path: Path) -> None:
    from drsearch.data.describe import describe_dataset

    root = _eyepacs(tmp_path)
    cfg = DataConfig(kind="eyepacs", root=root, val_fraction=0.25)
    records_, _ = records("eyepacs", root)
    train, val, _ = split_indices(records_, 0.25, seed=0)
    a, b = records_[int(train[0])], records_[int(val[0])]
    b.path.write_bytes(a.path.read_bytes())  # the same photograph on both sides
    records_[int(train[1])].path.write_bytes(b"truncated")
    s = describe_dataset(cfg)
    assert s.n_images == 80 and s.n_patients == 40
    assert sum(s.grade_counts["val"]) == len(val) and s.grade_counts["all"] == [16] * 5
    assert s.sizes["max"] == (16, 16)
    bad = records_[int(train[1])].path
    assert s.unreadable == [f"{bad} (cannot decode image (not a PNG, JPEG, TIFF or BMP image))"]
    assert s.cross_split_duplicates == [sorted([a.id, b.id], key=[r.id for r in records_].index)]


@pytest.mark.e2e
def test_training_on_an_eyepacs_replica(tmp_path: Path) -> None:
    from drsearch.config import Recipe, parse_config
    from drsearch.train import fit

    root = _eyepacs(tmp_path / "eyepacs")
    recipe = parse_config(
        Recipe,
        {
            "data": {"kind": "eyepacs", "root": str(root), "image_size": 16, "val_fraction": 0.25},
            "schedule": {"name": "none"},
            "train": {"epochs": 1, "batch_size": 8},
        },
        "test",
    )
    result = fit(recipe, run_dir=tmp_path / "run")
    split = (tmp_path / "run" / "split.csv").read_text().splitlines()[1:]
    sides: dict[str, set[str]] = {}
    for row in split:
        _, side, patient, *_ = row.split(",")
        sides.setdefault(patient, set()).add(side)
    assert result.epochs_completed == 1 and all(len(v) == 1 for v in sides.values())


def test_patient_split_on_the_real_eyepacs_label_table() -> None:
    """35,108 real EyePACS labels (17,561 patients) as shipped by the irfundusset package."""
    import importlib.util

    import pandas as pd

    from drsearch.data.adapters import eyepacs_patient
    from drsearch.data.records import ImageRecord

    spec = importlib.util.find_spec("irfundusset")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("irfundusset is not installed")
    listing = Path(spec.submodule_search_locations[0]) / "curated_master_listing.fdd"
    table = pd.read_pickle(listing)  # the package's own pickled DataFrame
    eyepacs_rows = table[table["listing"] == "EyePACS"]
    recs = [
        ImageRecord(name, Path(f"{name}.jpeg"), int(str(grade)), eyepacs_patient(name))
        for name, grade in zip(
            eyepacs_rows["image_name"], eyepacs_rows["src_condition"], strict=True
        )
    ]
    assert len(recs) == 35108 and len({r.patient_id for r in recs}) == 17561
    train, val, _ = split_indices(recs, 0.2, seed=0)
    assert not {recs[i].patient_id for i in train} & {recs[i].patient_id for i in val}
    assert abs(len(val) / len(recs) - 0.2) < 0.005
    labels = np.array([r.label for r in recs])
    overall = np.bincount(labels, minlength=5) / len(labels)
    in_val = np.bincount(labels[val], minlength=5) / len(val)
    assert np.abs(in_val - overall).max() < 0.005  # grade shares kept, imbalance included
    assert overall[0] > 0.73 and overall[4] < 0.025  # the real EyePACS imbalance
    again = split_indices(recs, 0.2, seed=0)
    assert np.array_equal(val, again[1])


def test_combined_sources_keep_their_origin_and_role(tmp_path: Path, tiny_dataset: Path) -> None:
    from drsearch.config import Recipe, parse_config
    from drsearch.train.prepare import prepare_data

    eyepacs_root = _eyepacs(tmp_path / "eyepacs")
    recipe = parse_config(
        Recipe,
        {
            "data": {
                "image_size": 16,
                "sources": [
                    {"kind": "eyepacs", "root": str(eyepacs_root), "use": "train"},
                    {"kind": "aptos2019", "root": str(tiny_dataset), "name": "aptos", "use": "val"},
                ],
            }
        },
        "test",
    )
    data = prepare_data(recipe.data)
    train_sources = {data.records[i].source for i in data.train_idx}
    val_sources = {data.records[i].source for i in data.val_idx}
    assert train_sources == {"eyepacs"} and val_sources == {"aptos"}
    assert len(data.train_idx) == 80 and len(data.val_idx) == 80
    assert data.records[int(data.train_idx[0])].id.startswith("eyepacs:")
    assert data.records[int(data.train_idx[0])].patient_id.startswith("eyepacs:")


def test_source_names_must_differ() -> None:
    from drsearch.config import Recipe, parse_config
    from drsearch.errors import ConfigError

    with pytest.raises(ConfigError, match="data.sources: source names must differ"):
        parse_config(
            Recipe,
            {
                "data": {
                    "sources": [{"kind": "folder", "root": "a"}, {"kind": "folder", "root": "b"}]
                }
            },
            "test",
        )
