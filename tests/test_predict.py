"""`drsearch predict`'s inputs and refusals (the grading itself is checked against
`drsearch evaluate` in tests/test_evaluate.py)."""

from __future__ import annotations

import csv
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from drsearch.errors import DataError
from drsearch.inspect.predict import Grader, Predictions, find_images, write_predictions


def _png(path: Path) -> Path:
    import cv2

    path.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(path), np.full((8, 8, 3), 100, np.uint8))
    return path


def test_a_csv_names_images_with_or_without_their_extension(tmp_path: Path) -> None:
    _png(tmp_path / "imgs" / "a1.png")
    _png(tmp_path / "imgs" / "b2.jpg")
    table = tmp_path / "test.csv"
    table.write_text("id_code,site\na1,x\nb2.jpg,y\nmissing,z\n")
    found = find_images(table, tmp_path / "imgs")
    assert found == [
        ("a1", tmp_path / "imgs" / "a1.png"),
        ("b2.jpg", tmp_path / "imgs" / "b2.jpg"),
        ("missing", tmp_path / "imgs" / "missing"),  # listed; written as "file not found"
    ]
    # the path column wins; relative to the CSV's folder by default
    (tmp_path / "paths.csv").write_text("path,id_code\nimgs/a1.png,zz\n")
    assert find_images(tmp_path / "paths.csv") == [("imgs/a1.png", tmp_path / "imgs" / "a1.png")]


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("name,grade\na,1\n", "no column naming the images; the header needs one of path"),
        ("path\n", "lists no images"),
        ("path,site\n\nx.png,a\n,b\n", "line 4: empty path"),
    ],
)
def test_a_csv_without_images_is_one_line(tmp_path: Path, content: str, message: str) -> None:
    (tmp_path / "t.csv").write_text(content)
    with pytest.raises(DataError, match=message):
        find_images(tmp_path / "t.csv")


def test_a_folder_is_searched_below_and_ids_keep_the_subfolder(tmp_path: Path) -> None:
    _png(tmp_path / "site a" / "1.png")
    _png(tmp_path / "2.JPG")
    (tmp_path / "notes.txt").write_text("x")
    assert find_images(tmp_path) == [
        ("2", tmp_path / "2.JPG"),
        ("site a/1", tmp_path / "site a" / "1.png"),
    ]
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no image files"):
        find_images(tmp_path / "empty")
    with pytest.raises(DataError, match="no such folder or CSV"):
        find_images(tmp_path / "nowhere")


def test_unreadable_flagged_and_missing_images_get_their_row_without_a_grade(
    tmp_path: Path,
) -> None:
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"garbage")
    good = _png(tmp_path / "good.png")
    black = _png(tmp_path / "black.png")
    probs = np.array([[0.1, 0.2, 0.3, 0.2, 0.2], *[[np.nan] * 5] * 3])
    result = Predictions(
        ["good", "bad", "gone", "black"], [good, bad, tmp_path / "gone.png", black], probs,
        np.array([2, -1, -1, -1]), np.array([True, False, False, False]),
        {"referable": np.array([True, False, False, False]),
         "vision_threatening": np.zeros(4, bool)},
        {"referable": np.array([0.7, 0, 0, 0]), "vision_threatening": np.array([0.4, 0, 0, 0])},
        [None, "cannot decode image (not a PNG, JPEG, TIFF or BMP image)", "file not found",
         None],
        [(), (), (), ("no_fundus", "size_out_of_range")],
    )  # fmt: skip
    out = tmp_path / "p.csv"
    write_predictions(result, Grader("g", [], ("identity",), {}), out)
    lines = list(csv.reader(out.read_text().splitlines()))
    assert lines[0][:4] == ["id", "path", "grade", "p_grade0"] and lines[0][-2:] == [
        "flags",
        "error",
    ]
    assert lines[1][2:4] == ["2", "0.100000"] and lines[1][-4:] == ["1", "0", "", ""]
    assert lines[2][2:] == [""] * 11 + ["cannot decode image (not a PNG, JPEG, TIFF or BMP image)"]
    assert lines[3][2:] == [""] * 11 + ["file not found"]
    assert lines[4][2:] == [""] * 10 + ["no_fundus;size_out_of_range", ""]
    assert result.unreadable == [bad, tmp_path / "gone.png"] and result.flagged == [black]
    write_predictions(result, Grader("g", [], ("identity",), {}), out)  # its own: replaced


def test_predict_refuses_a_study_file_and_a_recipe_without_weights(tmp_path: Path) -> None:
    from drsearch.cli import cli

    runner = CliRunner()
    with runner.isolated_filesystem(tmp_path):
        Path("s.yaml").write_text("name: x\nrecipe: r.yaml\nsearch_space: s.yaml\n")
        Path("imgs").mkdir()
        result = runner.invoke(cli, ["predict", "s.yaml", "imgs"])
        assert result.exit_code == 2 and "not an exported recipe or ensemble" in result.output
        Path("r.yaml").write_text(
            "data: {kind: synthetic, root: d}\npinned: {seed: 0, versions: {}, "
            "data_fingerprint: {}}\n"
        )
        result = runner.invoke(cli, ["predict", "r.yaml", "imgs"])
        assert result.exit_code == 2 and "give them with --weights FILE.pt" in result.output
        assert "Traceback" not in result.output


# -- predict on whatever a clinic's folder holds -----------------------------------------------
@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny recipe as ``drsearch export --weights`` writes it, with operating points and
    random weights (what these tests check is how images are read, not the grades)."""
    import hashlib

    import torch
    import yaml

    from drsearch.config import Recipe, parse_config
    from drsearch.train.model import build_model
    from tests.conftest import tiny_recipe_dict

    folder = tmp_path_factory.mktemp("exported")
    recipe = tiny_recipe_dict(folder / "data")
    points = {e: {"threshold": 0.5} for e in ("referable", "vision_threatening")}
    recipe["pinned"] = {"seed": 3, "versions": {}, "data_fingerprint": {},
                        "evaluation": {"operating_points": points}}  # fmt: skip
    target = folder / "model.yaml"
    target.write_text(yaml.safe_dump(recipe))
    parsed = parse_config(Recipe, recipe, "test")
    torch.manual_seed(0)
    state = build_model(parsed.model, parsed.data.image_size, False).state_dict()
    sha = hashlib.sha256(target.read_bytes()).hexdigest()
    torch.save({"state_dict": state, "recipe_sha256": sha}, target.with_suffix(".pt"))
    return target


def _fundus_png(path: Path, seed: int = 0) -> bytes:
    import cv2

    from drsearch.data.synth import draw_fundus

    img = draw_fundus(seed % 5, 48, np.random.default_rng(seed))
    data = cv2.imencode(".png", cv2.cvtColor(img, cv2.COLOR_RGB2BGR))[1].tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return data


def _predict(args: list[str]) -> subprocess.CompletedProcess[str]:
    """``drsearch predict`` in its own process: a crash is an exit code, a hang a timeout
    (the limit only ends a hang; nothing here depends on how long a run takes)."""
    return subprocess.run(
        [sys.executable, "-m", "drsearch.cli", "predict", *args],
        capture_output=True,
        text=True,
        timeout=300,
    )


def _rows(out: Path) -> dict[str, dict[str, str]]:
    with out.open(newline="") as fh:
        return {r["id"]: r for r in csv.DictReader(fh)}


def test_predict_reads_a_hostile_folder_row_by_row(exported: Path, tmp_path: Path) -> None:
    """Before: a name that is not UTF-8 crashed the process (segfault, no CSV), a FIFO was
    left out silently, a black image got a grade and a vision-threatening call."""
    import cv2

    from tests.conftest import png_header_only

    folder = tmp_path / "clinic"
    good = _fundus_png(folder / "good.png")
    fd = os.open(os.path.join(os.fsencode(folder), b"caf\xe9.png"), os.O_WRONLY | os.O_CREAT)
    os.write(fd, good)
    os.close(fd)
    _fundus_png(folder / "sub.png" / "inner.png", 1)  # a folder named like an image
    retina = pytest.importorskip("skimage.data").retina()
    small = cv2.resize(retina, (256, 256), interpolation=cv2.INTER_AREA)
    cv2.imwrite(str(folder / "retina.jpg"), cv2.cvtColor(small, cv2.COLOR_RGB2BGR))
    os.mkfifo(folder / "pipe.png")
    (folder / "loop.png").symlink_to(folder / "loop.png")
    (folder / "zero.png").symlink_to("/dev/zero")
    (folder / "huge.png").write_bytes(png_header_only(20000, 20000))
    (folder / "cut.png").write_bytes(good[: len(good) // 2])
    jpeg = (folder / "retina.jpg").read_bytes()
    (folder / "cutj.jpg").write_bytes(jpeg[: len(jpeg) // 2])
    bmp = cv2.imencode(".bmp", small)[1].tobytes()
    (folder / "cutb.bmp").write_bytes(bmp[: len(bmp) // 2])  # OpenCV logs an [ERROR] line
    rng = np.random.default_rng(0)
    for name, img in [
        ("black", np.zeros((64, 64, 3), np.uint8)),
        ("white", np.full((64, 64, 3), 255, np.uint8)),
        ("noise", rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)),
    ]:
        cv2.imwrite(str(folder / f"{name}.png"), img)
    out = tmp_path / "grades.csv"
    done = _predict([str(exported), str(folder), "-o", str(out)])
    assert done.returncode == 0, done.stderr
    assert "Traceback" not in done.stdout + done.stderr
    rows = _rows(out)
    assert sorted(rows) == sorted([
        "good", "caf\\xe9", "sub.png/inner", "retina", "pipe", "loop", "zero", "huge", "cut",
        "cutj", "cutb", "black", "white", "noise",
    ])  # fmt: skip
    for graded in ("good", "caf\\xe9", "sub.png/inner", "retina"):
        row = rows[graded]
        assert row["grade"] in "01234" and row["grade"] and not row["flags"] and not row["error"]
    assert rows["caf\\xe9"]["path"].endswith("clinic/caf\\xe9.png")
    assert rows["caf\\xe9"]["p_grade0"] == rows["good"]["p_grade0"]  # the same bytes
    errors = {k: r["error"] for k, r in rows.items() if r["error"]}
    assert errors["pipe"] == "not a regular file (a FIFO)"
    assert errors["loop"] == "a symbolic link loop"
    assert errors["zero"] == "not a regular file (a character device)"
    assert errors["huge"].startswith("20000x20000 pixels, over the limit of 6144 pixels a side")
    assert errors["cut"] == "truncated: the file ends before its image does (no PNG end chunk)"
    assert errors["cutj"] == "truncated: the file ends before its image does (no JPEG end marker)"
    assert errors["cutb"] == "cannot decode image (damaged data)"
    assert len(errors) == 7
    for name, row in rows.items():
        assert (row["grade"] == "") == bool(row["error"] or row["flags"]), name
        if row["grade"] == "":
            assert row["referable_call"] == row["vision_threatening_call"] == ""
    for name in ("black", "white", "noise"):
        assert rows[name]["flags"] == "no_fundus" and not rows[name]["error"]
    assert "graded 4 of 14 images" in done.stdout
    assert "Warning: 3 images were not graded, flagged" in done.stderr
    assert "no_fundus 3" in done.stderr and "Warning: 7 images could not be read" in done.stderr
    assert "[ERROR" not in done.stderr  # OpenCV's own log lines say what the rows say


def test_a_csv_naming_a_fifo_a_folder_or_nothing_gets_error_rows(
    exported: Path, tmp_path: Path
) -> None:
    """Before: a FIFO named in the CSV (or given as --out) hung predict forever."""
    folder = tmp_path / "clinic"
    _fundus_png(folder / "good.png")
    (folder / "sub").mkdir()
    os.mkfifo(folder / "pipe.png")
    (folder / "zero.png").symlink_to("/dev/zero")
    table = folder / "list.csv"
    table.write_text("path\ngood.png\npipe.png\nsub\nmissing.png\nzero.png\n")
    out = tmp_path / "grades.csv"
    done = _predict([str(exported), str(table), "-o", str(out)])
    assert done.returncode == 0, done.stderr
    rows = _rows(out)
    assert {k: r["error"] for k, r in rows.items()} == {
        "good.png": "",
        "pipe.png": "not a regular file (a FIFO)",
        "sub": "a folder, not an image file",
        "missing.png": "file not found",
        "zero.png": "not a regular file (a character device)",
    }
    assert rows["good.png"]["grade"] in "01234" and rows["good.png"]["grade"]
    os.mkfifo(tmp_path / "out.csv")
    refused = _predict([str(exported), str(table), "-o", str(tmp_path / "out.csv")])
    assert refused.returncode == 2 and "Traceback" not in refused.stderr
    assert refused.stderr.strip() == (
        f"Error: {tmp_path / 'out.csv'}: not a regular file (a FIFO); choose another --out"
    )


def test_a_csv_row_naming_the_root_folder_is_listed(tmp_path: Path) -> None:
    """Before: a traceback (``Path('/').with_name``) while resolving the names."""
    (tmp_path / "t.csv").write_text("path\n/\n.\n")
    assert find_images(tmp_path / "t.csv") == [("/", Path("/")), (".", tmp_path)]


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"path\ngood.png\ncaf\xe9.png\n", 'line 3: not UTF-8 text (byte 0xe9); save the file as '
         'UTF-8 ("CSV UTF-8" in a spreadsheet)'),
        (b"path,notes\ngood.png," + b"x" * 200_000 + b"\n", "line 2: a field longer than 131,072 "
         "characters (no image name is that long: is this the right file?)"),
        (None, "not a regular file (a FIFO); give a folder of images or a CSV listing them"),
    ],
)  # fmt: skip
def test_a_csv_that_cannot_be_read_is_one_line(
    exported: Path, tmp_path: Path, content: bytes | None, message: str
) -> None:
    """Before: a traceback and exit code 1 (a FIFO: "no such folder or CSV file")."""
    from drsearch.cli import cli

    table = tmp_path / "list.csv"
    if content is None:
        os.mkfifo(table)
    else:
        table.write_bytes(content)
    out = tmp_path / "p.csv"
    result = CliRunner().invoke(cli, ["predict", str(exported), str(table), "-o", str(out)])
    assert result.exit_code == 2 and result.output == f"Error: {table}: {message}\n"
    assert not out.exists()


def test_predict_survives_a_small_fuzz(
    exported: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """bench/predict_fuzz.py's files without the heavy ones (FIFOs, a socket, device links,
    loops, odd names, empty, random, truncated, corrupted, forged headers, blank images):
    every file is one row, graded, flagged or with its error, and nothing else happens."""
    from drsearch.cli import cli

    monkeypatch.syspath_prepend(str(Path(__file__).resolve().parents[1] / "bench"))
    predict_fuzz = pytest.importorskip("predict_fuzz")
    folder = tmp_path / "c"
    folder.mkdir()
    made = predict_fuzz.hostile(folder, 150, seed=1, heavy=False)
    out = tmp_path / "p.csv"
    result = CliRunner().invoke(cli, ["predict", str(exported), str(folder), "-o", str(out)])
    assert result.exit_code == 0, result.output
    with out.open(newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == len(made.listed) > 140
    states = Counter()
    for row in rows:
        state = [bool(row["grade"]), bool(row["flags"]), bool(row["error"])]
        assert sum(state) == 1, row
        states["graded" if state[0] else "flagged" if state[1] else "error"] += 1
    assert min(states.values()) >= 10, states
    errors = {r["error"] for r in rows}
    assert {"not a regular file (a FIFO)", "a symbolic link loop", "an empty file"} <= errors


def test_a_warning_naming_a_file_stays_one_line(exported: Path, tmp_path: Path) -> None:
    from drsearch.cli import cli

    folder = tmp_path / "clinic"
    _fundus_png(folder / "good.png")
    (folder / "bad\nname.png").write_bytes(b"not an image")
    out = tmp_path / "p.csv"
    result = CliRunner().invoke(cli, ["predict", str(exported), str(folder), "-o", str(out)])
    assert result.exit_code == 0, result.output
    (warning,) = [line for line in result.output.splitlines() if line.startswith("Warning")]
    assert warning.endswith(f"{folder}/bad\\x0aname.png")
    assert _rows(out)["bad\nname"]["path"] == f"{folder}/bad\nname.png"  # the CSV keeps it


@pytest.mark.skipif(not Path("/proc/self/mem").exists(), reason="Linux /proc")
def test_files_the_system_refuses_to_read_get_their_row_or_one_line(
    exported: Path, tmp_path: Path
) -> None:
    """An image whose read fails (EIO: a failing disk; here a link to /proc/self/mem) gets
    its error row, the others are graded; a list of images that cannot be read (EINVAL: a
    link to /proc/self/pagemap) is one line, exit 2; `data describe` and training with
    `data.skip_bad` go on past such an image. Before: a traceback, exit 1, no CSV."""
    folder = tmp_path / "clinic"
    _fundus_png(folder / "good.png")
    (folder / "mem.png").symlink_to("/proc/self/mem")
    out = tmp_path / "p.csv"
    done = _predict([str(exported), str(folder), "-o", str(out)])
    assert done.returncode == 0 and "Traceback" not in done.stderr, done.stderr[-2000:]
    rows = _rows(out)
    assert rows["good"]["grade"] != "" and rows["mem"]["grade"] == ""
    assert "cannot be read (Input/output error)" in rows["mem"]["error"]
    table = tmp_path / "list.csv"
    table.symlink_to("/proc/self/pagemap")
    listed = _predict([str(exported), str(table), "-o", str(tmp_path / "q.csv")])
    assert listed.returncode == 2 and "Traceback" not in listed.stderr, listed.stderr[-2000:]
    assert listed.stderr.strip().splitlines() == [
        f"Error: {table}: cannot be read (Invalid argument); give a folder of images or a CSV "
        "listing them"
    ]


@pytest.mark.skipif(not Path("/proc/self/mem").exists(), reason="Linux /proc")
def test_a_dataset_image_the_system_refuses_to_read(tmp_path: Path, tiny_dataset: Path) -> None:
    import shutil

    import yaml

    from tests.conftest import tiny_recipe_dict

    data = tmp_path / "data"
    shutil.copytree(tiny_dataset, data)
    victim = sorted((data / "train_images").iterdir())[3]
    victim.unlink()
    victim.symlink_to("/proc/self/mem")
    recipe = tmp_path / "r.yaml"
    body = tiny_recipe_dict(data, **{"train.epochs": 1, "schedule.warmup_epochs": 0})
    recipe.write_text(yaml.safe_dump(body))
    run = [sys.executable, "-m", "drsearch.cli"]
    described = subprocess.run(
        [*run, "data", "describe", str(recipe)], capture_output=True, text=True, timeout=300
    )
    assert described.returncode == 0 and "Traceback" not in described.stderr, described.stderr
    assert "cannot be read (Input/output error)" in described.stdout
    strict = subprocess.run(
        [*run, "train", str(recipe), "--out", str(tmp_path / "a"), "--quiet"],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert strict.returncode == 2 and "Traceback" not in strict.stderr, strict.stderr[-2000:]
    assert victim.stem in strict.stderr
    skipping = subprocess.run(
        [*run, "train", str(recipe), "--out", str(tmp_path / "b"), "--quiet",
         "--set", "data.skip_bad=true"],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert skipping.returncode == 0, skipping.stderr[-2000:]
