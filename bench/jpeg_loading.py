"""Loading speed of real-size fundus JPEGs: the first epoch (decode + preprocess, uncached)
against later epochs (cached pixels, random augmentation only).

    python bench/jpeg_loading.py [--n 64] [--size 256]

Uses scikit-image's 1411x1411 retina photograph (CC0), written as N JPEGs with small
brightness changes so no two files are equal. Prints figures; asserts nothing.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np
from skimage import data

from drsearch.config.recipe import AugmentConfig, DataConfig, PreprocessConfig
from drsearch.data.cache import build_cache
from drsearch.data.records import Skipped
from drsearch.data.sources import load_records
from drsearch.train.augment import train_pipeline
from drsearch.train.batches import Split, train_batches


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=64)
    parser.add_argument("--size", type=int, default=256)
    args = parser.parse_args()
    retina = cv2.cvtColor(data.retina(), cv2.COLOR_RGB2BGR)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "photos"
        (root / "0").mkdir(parents=True)
        for i in range(args.n):
            img = cv2.convertScaleAbs(retina, alpha=1.0, beta=i % 7)
            cv2.imwrite(str(root / "0" / f"r{i:04d}.jpg"), img, [cv2.IMWRITE_JPEG_QUALITY, 92])
        records = load_records(DataConfig(kind="folder", root=root), Skipped())
        for name, prep in (
            ("resize only", PreprocessConfig()),
            (
                "crop + Ben Graham + mask",
                PreprocessConfig(crop_border=True, ben_graham=True, circular_mask=True),
            ),
        ):
            t0 = time.perf_counter()
            cache = build_cache(
                records, [args.size], "memory", 4.0, None, False, Skipped(), prep=prep
            )
            first = args.n / (time.perf_counter() - t0)
            split = Split(cache.arrays[args.size], np.arange(args.n), np.zeros(args.n, int))
            pipeline = train_pipeline(AugmentConfig())
            t0 = time.perf_counter()
            seen = sum(len(labels) for _, labels in train_batches(split, 16, 0, 1, pipeline, 0))
            later = seen / (time.perf_counter() - t0)
            print(
                f"{name:>26}: first epoch (decode 1411x1411 JPEG + preprocess to "
                f"{args.size}px) {first:7.1f} img/s; later epochs (cached + augmentation) "
                f"{later:7.1f} img/s"
            )


if __name__ == "__main__":
    main()
