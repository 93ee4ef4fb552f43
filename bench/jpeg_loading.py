"""Loading speed of real-size fundus JPEGs: the first epoch (decode + preprocess + cache write)
against later epochs (cached pixels, random augmentation only) and against pure compute.

    python bench/jpeg_loading.py [--n 32] [--size 256] [--photo 1411 2048 3072 4096]

Uses scikit-image's 1411x1411 retina photograph (CC0), resized to each ``--photo`` width at a
4:3 camera frame (the fundus centred on black, as fundus cameras write it) and written as N
JPEGs (quality 92) with small brightness changes so no two files are equal. Per photo size and
preprocessing: first-epoch img/s through the disk cache (``data.cache: disk``), cache size on
disk, later-epoch img/s (augmentation of cached pixels), and the resnet10t forward+backward
img/s at ``--size`` (what training costs per image, for scale). Ben Graham's cost per image is
the difference between the two preprocessings. Prints figures; asserts nothing.
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


def photos(root: Path, n: int, width: int) -> None:
    """``n`` 4:3 JPEGs ``width`` px wide: the retina centred on black, brightness varied."""
    retina = cv2.cvtColor(data.retina(), cv2.COLOR_RGB2BGR)
    height = width * 3 // 4
    side = min(height, retina.shape[0] * width // 1411)
    eye = cv2.resize(retina, (side, side), interpolation=cv2.INTER_CUBIC)
    frame = np.zeros((height, width, 3), np.uint8)
    top, left = (height - side) // 2, (width - side) // 2
    frame[top : top + side, left : left + side] = eye
    (root / "0").mkdir(parents=True)
    for i in range(n):
        img = cv2.convertScaleAbs(frame, alpha=1.0, beta=i % 7)
        cv2.imwrite(str(root / "0" / f"r{i:04d}.jpg"), img, [cv2.IMWRITE_JPEG_QUALITY, 92])


def compute_speed(size: int, batch: int = 16, steps: int = 20) -> float:
    """resnet10t forward+backward+AdamW img/s on random tensors at ``size``."""
    import timm
    import torch
    import torch.nn.functional as F

    model = timm.create_model("resnet10t", num_classes=5).train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    x, y = torch.randn(batch, 3, size, size), torch.randint(0, 5, (batch,))
    for i in range(steps + 2):
        if i == 2:
            t0 = time.perf_counter()
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return steps * batch / (time.perf_counter() - t0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=32)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--photo", type=int, nargs="+", default=[1411, 2048, 3072, 4096])
    args = parser.parse_args()
    compute = compute_speed(args.size)
    print(f"resnet10t fwd+bwd at {args.size}px: {compute:.1f} img/s (pure compute, for scale)")
    print("photo | preprocessing | first epoch img/s | ms/img | cache MB | later epochs img/s")
    per_image: dict[int, dict[str, float]] = {}
    for width in args.photo:
        with tempfile.TemporaryDirectory() as tmp:
            root = Path(tmp) / "photos"
            photos(root, args.n, width)
            records = load_records(DataConfig(kind="folder", root=root), Skipped())
            for name, prep in (
                ("resize only", PreprocessConfig()),
                (
                    "crop + Ben Graham + mask",
                    PreprocessConfig(crop_border=True, ben_graham=True, circular_mask=True),
                ),
            ):
                cache_dir = Path(tmp) / f"cache-{len(name)}"
                t0 = time.perf_counter()
                cache = build_cache(
                    records, [args.size], "disk", 4.0, cache_dir, False, Skipped(), prep=prep
                )
                seconds = time.perf_counter() - t0
                size_mb = sum(f.stat().st_size for f in cache_dir.rglob("*.npy")) / 2**20
                split = Split(cache.arrays[args.size], np.arange(args.n), np.zeros(args.n, int))
                pipeline = train_pipeline(AugmentConfig())
                t0 = time.perf_counter()
                seen = sum(len(y) for _, y in train_batches(split, 16, 0, 1, pipeline, 0))
                later = seen / (time.perf_counter() - t0)
                per_image.setdefault(width, {})[name] = seconds / args.n * 1000
                print(
                    f"{width}x{width * 3 // 4} | {name} | {args.n / seconds:.1f} | "
                    f"{seconds / args.n * 1000:.1f} | {size_mb:.1f} | {later:.1f}"
                )
    for width, costs in per_image.items():
        extra = costs["crop + Ben Graham + mask"] - costs["resize only"]
        print(f"{width} px: crop + Ben Graham + mask add {extra:.1f} ms per image")


if __name__ == "__main__":
    main()
