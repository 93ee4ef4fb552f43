"""Label tables, bad rows, the split and the decode-once cache."""

from __future__ import annotations

import csv
import os
import shutil
from pathlib import Path

import numpy as np
import pytest

from drsearch.config.recipe import DataConfig
from drsearch.data import decode as decode_mod
from drsearch.data.cache import build_cache
from drsearch.data.records import ImageRecord, Skipped
from drsearch.data.sources import load_records
from drsearch.data.split import split_indices, write_split
from drsearch.errors import DataError
from drsearch.train.prepare import prepare_data


@pytest.fixture
def aptos(tmp_path: Path, tiny_dataset: Path) -> Path:
    root = tmp_path / "aptos"
    shutil.copytree(tiny_dataset, root)
    return root


def _rewrite_label(root: Path, row: int, label: str) -> str:
    lines = (root / "train.csv").read_text().splitlines()
    image_id = lines[row].split(",")[0]
    lines[row] = f"{image_id},{label}"
    (root / "train.csv").write_text("\n".join(lines) + "\n")
    return image_id


def test_aptos_records(aptos: Path) -> None:
    records = load_records(DataConfig(kind="aptos2019", root=aptos), Skipped())
    assert len(records) == 80
    assert sorted({r.label for r in records}) == [0, 1, 2, 3, 4]
    assert records[0].path == aptos / "train_images" / f"{records[0].id}.png"


@pytest.mark.parametrize("label", ["5", "-1", "2.5", "severe"])
def test_label_outside_grades_names_file_and_line(aptos: Path, label: str) -> None:
    _rewrite_label(aptos, 3, label)
    with pytest.raises(DataError, match=rf"train\.csv:4: label '{label}' is not a grade 0-4"):
        load_records(DataConfig(kind="aptos2019", root=aptos), Skipped())
    skipped = Skipped()
    records = load_records(DataConfig(kind="aptos2019", root=aptos, skip_bad=True), skipped)
    assert len(records) == 79 and skipped.reasons == {"bad label": 1}


def test_missing_image_and_missing_dataset(aptos: Path, tmp_path: Path) -> None:
    victim = next((aptos / "train_images").iterdir())
    victim.unlink()
    with pytest.raises(DataError, match=rf"image .*{victim.name} not found"):
        load_records(DataConfig(kind="aptos2019", root=aptos), Skipped())
    with pytest.raises(DataError, match="label file not found; check data.root"):
        load_records(DataConfig(kind="aptos2019", root=tmp_path / "nowhere"), Skipped())


def test_unreadable_image_is_an_error_or_skipped(aptos: Path) -> None:
    victim = sorted((aptos / "train_images").iterdir())[5]
    victim.write_bytes(b"not a png")
    cfg = DataConfig(kind="aptos2019", root=aptos, image_size=32)
    with pytest.raises(DataError, match=rf"{victim.name}: cannot decode image"):
        prepare_data(cfg)
    data = prepare_data(cfg.model_copy(update={"skip_bad": True}))
    assert data.skipped.reasons == {"unreadable image": 1}
    assert len(data.records) == 79
    assert victim.stem not in {r.id for r in data.records}


SCRIPT = """
import sys
from pathlib import Path
from drsearch.config.recipe import DataConfig
from drsearch.errors import DataError
from drsearch.train.prepare import prepare_data

cfg = DataConfig(kind="folder", root=Path(sys.argv[1]), image_size=16, val_fraction=0.25)
try:
    prepare_data(cfg)
except DataError as exc:
    print("stopped:", exc)
data = prepare_data(cfg.model_copy(update={"skip_bad": True}))
print("skipped:", dict(data.skipped.reasons), len(data.records))
"""


def test_a_fifo_or_a_broken_link_in_a_dataset_is_named_not_waited_on(
    tmp_path: Path, tiny_dataset: Path
) -> None:
    """Before: hashing the FIFO's content for the cache key waited for a writer forever (run
    in a child process: a hang is a timeout there, which only ends a hang)."""
    import subprocess
    import sys

    root = tmp_path / "photos"
    for i, image in enumerate(sorted((tiny_dataset / "train_images").iterdir())[:20]):
        (root / str(i % 5)).mkdir(parents=True, exist_ok=True)
        shutil.copy(image, root / str(i % 5) / image.name)
    os.mkfifo(root / "0" / "pipe.png")
    (root / "1" / "gone.png").symlink_to(root / "nowhere.png")
    done = subprocess.run(
        [sys.executable, "-c", SCRIPT, str(root)], capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr
    assert f"stopped: {root / '0' / 'pipe.png'}: not a regular file (a FIFO) (2 unreadable" in (
        done.stdout
    )
    assert "skipped: {'unreadable image': 2} 20" in done.stdout


def test_csv_with_header_problems(tmp_path: Path) -> None:
    table = tmp_path / "labels.csv"
    table.write_text("file,grade\na.png,1\n")
    with pytest.raises(DataError, match="missing column.*path, label"):
        load_records(DataConfig(kind="csv", csv=table), Skipped())


def _records(n_patients: int, seed: int = 0) -> list[ImageRecord]:
    rng = np.random.default_rng(seed)
    out = []
    for p in range(n_patients):
        grade = int(rng.choice(5, p=[0.6, 0.1, 0.2, 0.05, 0.05]))
        for eye in ("left", "right"):
            out.append(ImageRecord(f"{p}_{eye}", Path(f"{p}_{eye}.png"), grade, f"p{p}"))
    return out


def test_patient_split_keeps_both_eyes_together_and_is_deterministic() -> None:
    records = _records(300)
    train, val, _ = split_indices(records, 0.2, seed=7)
    train_patients = {records[i].patient_id for i in train}
    val_patients = {records[i].patient_id for i in val}
    assert not train_patients & val_patients
    assert 0.15 < len(val) / len(records) < 0.25
    again = split_indices(records, 0.2, seed=7)
    assert np.array_equal(train, again[0]) and np.array_equal(val, again[1])
    other = split_indices(records, 0.2, seed=8)
    assert not np.array_equal(val, other[1])


def test_stratified_split_without_patients() -> None:
    labels = [0] * 50 + [1] * 20 + [2] * 20 + [3] * 5 + [4] * 5
    records = [ImageRecord(str(i), Path(f"{i}.png"), g) for i, g in enumerate(labels)]
    train, val, _ = split_indices(records, 0.2, seed=0)
    val_counts = np.bincount([labels[i] for i in val], minlength=5)
    assert val_counts.tolist() == [10, 4, 4, 1, 1]
    assert len(set(train) | set(val)) == 100


def test_csv_kind_with_patients_end_to_end(tmp_path: Path, tiny_dataset: Path) -> None:
    table = tmp_path / "labels.csv"
    with (tiny_dataset / "train.csv").open() as fh, table.open("w", newline="") as out:
        writer = csv.writer(out)
        writer.writerow(["path", "label", "patient_id"])
        for i, row in enumerate(csv.DictReader(fh)):
            path = tiny_dataset / "train_images" / f"{row['id_code']}.png"
            writer.writerow([str(path), row["diagnosis"], f"patient{i // 2}"])
    data = prepare_data(DataConfig(kind="csv", csv=table, image_size=24, val_fraction=0.25))
    assert data.cache.arrays[24].shape == (80, 24, 24, 3)
    sides = {}
    for side, idx in (("train", data.train_idx), ("val", data.val_idx)):
        for i in idx:
            sides.setdefault(data.records[i].patient_id, set()).add(side)
    assert all(len(s) == 1 for s in sides.values())
    write_split(tmp_path / "split.csv", data.records, data.train_idx, data.val_idx)
    with (tmp_path / "split.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == 80 and {r["split"] for r in rows} == {"train", "val"}
    assert all(r["patient_id"].startswith("patient") for r in rows)


def test_disk_cache_is_reused_and_matches_memory(
    tmp_path: Path, tiny_dataset: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    records = load_records(DataConfig(kind="aptos2019", root=tiny_dataset), Skipped())
    memory = build_cache(records, [16, 32], "memory", 4.0, None, False, Skipped())
    disk = build_cache(records, [16, 32], "disk", 4.0, tmp_path / "c", False, Skipped())
    assert memory.location == "memory" and disk.location.startswith(str(tmp_path / "c"))
    for size in (16, 32):
        assert np.array_equal(memory.arrays[size], np.asarray(disk.arrays[size]))

    def no_decoding(*args: object, **kwargs: object) -> None:
        raise AssertionError("the second build must not decode images")

    monkeypatch.setattr(decode_mod.cv2, "imdecode", no_decoding)
    again = build_cache(records, [16, 32], "auto", 1e-9, tmp_path / "c", False, Skipped())
    assert again.location == disk.location
    assert np.array_equal(np.asarray(again.arrays[32]), memory.arrays[32])


def test_cross_split_duplicates_are_counted_and_optionally_removed(aptos: Path) -> None:
    cfg = DataConfig(kind="aptos2019", root=aptos, image_size=16)
    data = prepare_data(cfg)
    train_rec = data.records[int(data.train_idx[0])]
    val_rec = data.records[int(data.val_idx[0])]
    val_rec.path.write_bytes(train_rec.path.read_bytes())  # the same photo on both sides
    again = prepare_data(cfg)
    assert again.val_duplicates == 1 and len(again.val_idx) == len(data.val_idx)
    dropped = prepare_data(cfg.model_copy(update={"drop_val_duplicates": True}))
    assert dropped.val_duplicates == 1 and len(dropped.val_idx) == len(data.val_idx) - 1
    assert val_rec.id not in dropped.ids("val")
    assert dropped.skipped.reasons == {"duplicate of a training image (removed from validation)": 1}


def test_content_index_reads_a_file_again_only_when_it_changes(
    tmp_path: Path, aptos: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from drsearch.data import content
    from drsearch.data.content import content_ids

    records = load_records(DataConfig(kind="aptos2019", root=aptos), Skipped())
    first = content_ids(records, tmp_path)
    reads: list[Path] = []
    original = content.file_sha1
    monkeypatch.setattr(content, "file_sha1", lambda path: reads.append(path) or original(path))
    assert content_ids(records, tmp_path) == first and reads == []
    records[3].path.write_bytes(records[4].path.read_bytes())
    reads.clear()
    changed = content_ids(records, tmp_path)
    assert reads == [records[3].path] and changed[3] == first[4]
