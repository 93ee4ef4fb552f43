"""`drsearch predict`'s inputs and refusals (the grading itself is checked against
`drsearch evaluate` in tests/test_evaluate.py)."""

from __future__ import annotations

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


def test_unreadable_and_missing_images_get_their_error_row(tmp_path: Path) -> None:
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"garbage")
    good = _png(tmp_path / "good.png")
    probs = np.array([[0.1, 0.2, 0.3, 0.2, 0.2], [np.nan] * 5, [np.nan] * 5])
    result = Predictions(
        ["good", "bad", "gone"], [good, bad, tmp_path / "gone.png"], probs,
        np.array([2, -1, -1]), np.array([True, False, False]),
        {"referable": np.array([True, False, False]), "vision_threatening": np.zeros(3, bool)},
        {"referable": np.array([0.7, 0, 0]), "vision_threatening": np.array([0.4, 0, 0])},
    )  # fmt: skip
    out = tmp_path / "p.csv"
    write_predictions(result, Grader("g", [], ("identity",), {}), out)
    lines = out.read_text().splitlines()
    assert lines[0].startswith("id,path,grade,p_grade0")
    assert lines[1].split(",")[2:4] == ["2", "0.100000"] and lines[1].endswith(",1,0,")
    assert lines[2].endswith(",cannot decode image") and lines[3].endswith(",file not found")
    assert result.unreadable == [bad, tmp_path / "gone.png"]
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
