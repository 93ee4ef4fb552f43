"""Fundus preprocessing on real photographs shipped by scikit-image (CC0), and its cache."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from drsearch.config.recipe import DataConfig, PreprocessConfig
from drsearch.data import decode as decode_mod
from drsearch.data.cache import build_cache
from drsearch.data.preprocess import ben_graham, crop_border, preprocess, square_pad
from drsearch.data.records import Skipped
from drsearch.data.sources import load_records

skimage_data = pytest.importorskip("skimage.data")


@pytest.fixture(scope="module")
def retina() -> np.ndarray:
    return skimage_data.retina()  # 1411 x 1411 RGB fundus photograph


def inner_disc(size: int, radius: int) -> np.ndarray:
    mask = np.zeros((size, size), np.uint8)
    cv2.circle(mask, (size // 2, size // 2), radius, 1, -1)
    return mask.astype(bool)


def test_border_crop_finds_the_fundus_circle(retina: np.ndarray) -> None:
    cropped = crop_border(retina, 10)
    h, w = cropped.shape[:2]
    assert abs(h - w) <= 0.02 * w  # a circle's bounding box is square
    assert 0.95 * retina.shape[1] <= w <= retina.shape[1]
    framed = cv2.copyMakeBorder(retina, 150, 50, 300, 20, cv2.BORDER_CONSTANT, value=0)
    assert np.array_equal(crop_border(framed, 10), cropped)  # the black frame goes


def test_ben_graham_flattens_illumination_around_mid_grey(retina: np.ndarray) -> None:
    small = cv2.resize(
        square_pad(crop_border(retina, 10)), (256, 256), interpolation=cv2.INTER_AREA
    )
    out = ben_graham(small, 0.1)
    inside = inner_disc(256, 120)
    assert 120 < out[inside].mean() < 150  # centred on 128
    low_before = cv2.GaussianBlur(small.astype(np.float32), (0, 0), 20)[inside].std()
    low_after = cv2.GaussianBlur(out.astype(np.float32), (0, 0), 20)[inside].std()
    assert low_after < low_before / 4  # uneven illumination removed


def test_ben_graham_brings_out_a_microaneurysm() -> None:
    ma = skimage_data.microaneurysms()  # 102 x 102 grey crop around a microaneurysm
    out = ben_graham(np.stack([ma] * 3, axis=-1), 0.1)[..., 0]
    assert out.mean() - out.min() > 1.5 * (ma.mean() - ma.min())
    assert np.unravel_index(out.argmin(), out.shape) == pytest.approx(
        np.unravel_index(cv2.GaussianBlur(ma, (0, 0), 2).argmin(), ma.shape), abs=6
    )


def test_full_pipeline_with_mask(retina: np.ndarray) -> None:
    cfg = PreprocessConfig(crop_border=True, ben_graham=True, circular_mask=True)
    out = preprocess(retina, cfg, 128)
    assert out.shape == (128, 128, 3) and out.dtype == np.uint8
    assert out[0, 0].tolist() == [0, 0, 0]  # masked corner
    assert 110 < out[inner_disc(128, 55)].mean() < 160  # Ben Graham's mid grey inside


def test_cache_is_reused_and_recomputed_when_preprocessing_changes(
    tmp_path: Path, retina: np.ndarray, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = tmp_path / "photos"
    (root / "0").mkdir(parents=True)
    cv2.imwrite(str(root / "0" / "retina.jpg"), cv2.cvtColor(retina, cv2.COLOR_RGB2BGR))
    records = load_records(DataConfig(kind="folder", root=root), Skipped())
    plain, graham = (
        PreprocessConfig(crop_border=True),
        PreprocessConfig(crop_border=True, ben_graham=True),
    )
    first = build_cache(records, [64], "disk", 4.0, tmp_path / "c", False, Skipped(), prep=plain)
    reads = []
    real = decode_mod.cv2.imdecode
    monkeypatch.setattr(decode_mod.cv2, "imdecode", lambda *a: reads.append(a) or real(*a))
    again = build_cache(records, [64], "disk", 4.0, tmp_path / "c", False, Skipped(), prep=plain)
    assert reads == [] and again.location == first.location  # a cache hit: nothing decoded
    other = build_cache(records, [64], "disk", 4.0, tmp_path / "c", False, Skipped(), prep=graham)
    assert len(reads) == 1 and other.location != first.location
    assert not np.array_equal(np.asarray(other.arrays[64]), np.asarray(first.arrays[64]))


def test_a_wide_photograph_keeps_its_round_fundus_by_default() -> None:
    # a 2:1 photograph (as many fundus cameras write), the fundus a centred disc, no crop
    img = np.zeros((100, 200, 3), dtype=np.uint8)
    cv2.circle(img, (100, 50), 45, (180, 90, 40), -1)

    def extent(out: np.ndarray) -> tuple[int, int]:
        bright = out.max(axis=2) > 30
        rows, cols = np.flatnonzero(bright.any(axis=1)), np.flatnonzero(bright.any(axis=0))
        return int(rows[-1] - rows[0] + 1), int(cols[-1] - cols[0] + 1)

    assert PreprocessConfig().keep_aspect
    h, w = extent(preprocess(img, PreprocessConfig(), 64))
    assert abs(h - w) <= 1 and h == pytest.approx(64 * 90 / 200, abs=2)  # round, padded
    h, w = extent(preprocess(img, PreprocessConfig(keep_aspect=False), 64))
    assert w / h == pytest.approx(0.5, abs=0.05)  # squashed: the old behaviour, on request
