"""The synthetic fundus set: APTOS layout, exact imbalance, determinism, grade signal."""

from __future__ import annotations

import csv
from pathlib import Path

import cv2
import numpy as np
import pytest

from drsearch.data.synth import draw_fundus, grade_counts, write_synthetic_dataset


def test_eyepacs_imbalance_counts() -> None:
    assert grade_counts(200, "eyepacs") == [146, 14, 30, 5, 5]
    assert grade_counts(7, "balanced") == [2, 2, 1, 1, 1]
    assert sum(grade_counts(1001, "eyepacs")) == 1001


def test_layout_and_determinism(tmp_path: Path) -> None:
    a = write_synthetic_dataset(tmp_path / "a", n=20, size=64, seed=5)
    b = write_synthetic_dataset(tmp_path / "b", n=20, size=64, seed=5)
    with (a / "train.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    assert list(rows[0]) == ["id_code", "diagnosis"]
    assert len(rows) == 20
    for row in rows:
        img_a = cv2.imread(str(a / "train_images" / f"{row['id_code']}.png"))
        img_b = cv2.imread(str(b / "train_images" / f"{row['id_code']}.png"))
        assert img_a.shape == (64, 64, 3)
        assert np.array_equal(img_a, img_b)
    assert (a / "train.csv").read_text() == (b / "train.csv").read_text()


def test_looks_like_a_fundus() -> None:
    img = draw_fundus(0, 128, np.random.default_rng(0)).astype(float)
    corner, centre = img[:8, :8].mean(), img[48:80, 48:80].mean(axis=(0, 1))
    assert corner < 10  # dark background outside the circular field
    assert centre[0] > centre[1] > centre[2]  # reddish-orange retina


def _lesion_pixels(img: np.ndarray) -> int:
    """Dark-red (haemorrhage/MA) and bright-yellow (exudate) pixels."""
    r, g, b = (img[..., i].astype(int) for i in range(3))
    dark_red = (r > 60) & (r < 140) & (g < 35) & (b < 40)
    yellow = (r > 200) & (g > 170) & (b < 140)
    return int(dark_red.sum() + yellow.sum())


@pytest.mark.parametrize("grade", [0, 1, 2, 3])
def test_lesion_load_grows_with_grade_on_average(grade: int) -> None:
    def mean_load(g: int) -> float:
        return float(
            np.mean(
                [
                    _lesion_pixels(draw_fundus(g, 128, np.random.default_rng([9, g, k])))
                    for k in range(12)
                ]
            )
        )

    assert mean_load(grade + 1) > mean_load(grade)
