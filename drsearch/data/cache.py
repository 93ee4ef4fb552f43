"""Decode and preprocess every image once; keep the pixels in memory, or on disk if too big.

Decoding a JPEG/PNG every epoch is what makes naive trainers slow. Here each image is
decoded once, resized to every size the run needs (progressive resizing included) and kept
as one ``uint8`` array per size. Per epoch only random augmentation runs. When the arrays
would exceed ``data.cache_max_gb`` (or ``data.cache: disk``), they live in ``.npy`` files
under the cache folder, memory-mapped, keyed by the images' content (SHA-1, see
``content.py``), the sizes and the preprocessing, written to a temporary name then renamed
so that concurrent runs (trials of a study) never see half a file and share the result.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from drsearch.config.recipe import PreprocessConfig
from drsearch.data.content import content_ids
from drsearch.data.preprocess import preprocess
from drsearch.data.records import ImageRecord, Skipped
from drsearch.errors import DataError

_FORMAT_VERSION = 1
Progress = Callable[[int, int], None]


@dataclass
class ImageCache:
    """Pixels of every usable record at each size: ``arrays[size][i]`` is HxWx3 RGB uint8."""

    arrays: dict[int, np.ndarray]
    usable: np.ndarray  # bool per record: decoded fine
    location: str  # "memory" or the disk folder


def default_cache_dir() -> Path:
    """``$DRSEARCH_CACHE`` or ``~/.cache/drsearch``."""
    env = os.environ.get("DRSEARCH_CACHE")
    return Path(env) if env else Path.home() / ".cache" / "drsearch"


def build_cache(
    records: Sequence[ImageRecord],
    sizes: Sequence[int],
    mode: str,
    max_gb: float,
    cache_dir: Path | None,
    skip_bad: bool,
    skipped: Skipped,
    progress: Progress | None = None,
    prep: PreprocessConfig | None = None,
    ids: Sequence[str] | None = None,
) -> ImageCache:
    """Decode each record once and preprocess it to every size in ``sizes``."""
    prep = prep or PreprocessConfig()
    needed_gb = sum(len(records) * s * s * 3 for s in sizes) / 1024**3
    on_disk = mode == "disk" or (mode == "auto" and needed_gb > max_gb)
    if not on_disk:
        arrays = {s: np.empty((len(records), s, s, 3), np.uint8) for s in sizes}
        usable = _decode_all(records, arrays, prep, progress)
        _handle_unreadable(records, usable, skip_bad, skipped)
        return ImageCache(arrays, usable, "memory")
    root = cache_dir or default_cache_dir()
    ids = ids if ids is not None else content_ids(records, root)
    folder = root / "images" / _key(ids, sizes, prep)
    return _disk_cache(folder, records, sizes, prep, skip_bad, skipped, progress)


def _disk_cache(
    folder: Path,
    records: Sequence[ImageRecord],
    sizes: Sequence[int],
    prep: PreprocessConfig,
    skip_bad: bool,
    skipped: Skipped,
    progress: Progress | None,
) -> ImageCache:
    done = folder / "usable.npy"
    if not done.is_file():
        folder.mkdir(parents=True, exist_ok=True)
        tag = f"{os.getpid()}.tmp"
        arrays = {
            s: np.lib.format.open_memmap(
                folder / f"{s}.npy.{tag}", mode="w+", dtype=np.uint8, shape=(len(records), s, s, 3)
            )
            for s in sizes
        }
        usable = _decode_all(records, arrays, prep, progress)
        for s, arr in arrays.items():
            arr.flush()
            os.replace(folder / f"{s}.npy.{tag}", folder / f"{s}.npy")
        np.save(folder / f"usable.npy.{tag}.npy", usable)
        os.replace(folder / f"usable.npy.{tag}.npy", done)  # marks the cache complete
    usable = np.load(done, allow_pickle=False)
    _handle_unreadable(records, usable, skip_bad, skipped)
    arrays = {s: np.load(folder / f"{s}.npy", mmap_mode="r", allow_pickle=False) for s in sizes}
    return ImageCache(arrays, usable, str(folder))


def _decode_all(
    records: Sequence[ImageRecord],
    arrays: dict[int, np.ndarray],
    prep: PreprocessConfig,
    progress: Progress | None,
) -> np.ndarray:
    return decode_into([r.path for r in records], arrays, prep, progress)


def decode_into(
    paths: Sequence[Path],
    arrays: dict[int, np.ndarray],
    prep: PreprocessConfig,
    progress: Progress | None = None,
) -> np.ndarray:
    """Decode ``paths`` (in threads: OpenCV releases the GIL) and preprocess each image into
    ``arrays[size][i]`` at every size; returns which images decoded (an unreadable one is
    left black)."""
    usable = np.ones(len(paths), dtype=bool)
    sizes = list(arrays)

    def work(i: int) -> None:
        img = cv2.imread(str(paths[i]), cv2.IMREAD_COLOR)
        if img is None:
            usable[i] = False
            for s in sizes:
                arrays[s][i] = 0
            return
        img = cv2.cvtColor(img, cv2.COLOR_BGR2RGB)
        for s in sizes:
            arrays[s][i] = preprocess(img, prep, s)

    with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:
        for n, _ in enumerate(pool.map(work, range(len(paths))), start=1):
            if progress and (n % 64 == 0 or n == len(paths)):
                progress(n, len(paths))
    return usable


def _handle_unreadable(
    records: Sequence[ImageRecord], usable: np.ndarray, skip_bad: bool, skipped: Skipped
) -> None:
    bad = np.flatnonzero(~usable)
    if len(bad) and not skip_bad:
        raise DataError(
            f"{records[bad[0]].path}: cannot decode image ({len(bad)} unreadable in all; "
            "set data.skip_bad: true to skip them)"
        )
    for i in bad:
        skipped.add("unreadable image", f"{records[i].path}: cannot decode image")


def _key(ids: Sequence[str], sizes: Sequence[int], prep: PreprocessConfig) -> str:
    """Identity of the cached arrays: the files' content in row order, sizes, preprocessing."""
    h = hashlib.sha1()
    h.update(
        json.dumps(
            {"v": _FORMAT_VERSION, "sizes": sorted(sizes), "preprocess": prep.model_dump()},
            sort_keys=True,
        ).encode()
    )
    for content in ids:
        h.update(content.encode())
    return h.hexdigest()[:20]
