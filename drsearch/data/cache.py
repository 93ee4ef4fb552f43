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
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from drsearch.config.recipe import PreprocessConfig
from drsearch.data.content import content_ids
from drsearch.data.decode import TRAIN_DECODE_MEMORY, decode_into
from drsearch.data.records import ImageRecord, Skipped
from drsearch.errors import DataError
from drsearch.fmt import filename

# 2: decoded by data/decode.py, which refuses truncated files that version 1 cached part-grey
_FORMAT_VERSION = 2
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
        usable, errors = _decode_all(records, arrays, prep, progress)
        _handle_unreadable(records, usable, skip_bad, skipped, errors)
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
    errors: list[str | None] = []
    if not done.is_file():
        folder.mkdir(parents=True, exist_ok=True)
        tag = f"{os.getpid()}.tmp"
        arrays = {
            s: np.lib.format.open_memmap(
                folder / f"{s}.npy.{tag}", mode="w+", dtype=np.uint8, shape=(len(records), s, s, 3)
            )
            for s in sizes
        }
        usable, errors = _decode_all(records, arrays, prep, progress)
        for s, arr in arrays.items():
            arr.flush()
            os.replace(folder / f"{s}.npy.{tag}", folder / f"{s}.npy")
        np.save(folder / f"usable.npy.{tag}.npy", usable)
        os.replace(folder / f"usable.npy.{tag}.npy", done)  # marks the cache complete
    usable = np.load(done, allow_pickle=False)
    _handle_unreadable(records, usable, skip_bad, skipped, errors)
    arrays = {s: np.load(folder / f"{s}.npy", mmap_mode="r", allow_pickle=False) for s in sizes}
    return ImageCache(arrays, usable, str(folder))


def _decode_all(
    records: Sequence[ImageRecord],
    arrays: dict[int, np.ndarray],
    prep: PreprocessConfig,
    progress: Progress | None,
) -> tuple[np.ndarray, list[str | None]]:
    out = decode_into([r.path for r in records], arrays, prep, progress, memory=TRAIN_DECODE_MEMORY)
    return out.usable, out.errors


def _handle_unreadable(
    records: Sequence[ImageRecord],
    usable: np.ndarray,
    skip_bad: bool,
    skipped: Skipped,
    errors: Sequence[str | None] = (),
) -> None:
    """Stop at the first unreadable image (or, with ``skip_bad``, count them); its reason is
    known when this run decoded it (a disk cache built earlier kept only which failed)."""
    bad = np.flatnonzero(~usable)

    def why(i: int) -> str:
        return (errors[i] if i < len(errors) else None) or "cannot decode image"

    if len(bad) and not skip_bad:
        raise DataError(
            f"{filename(records[bad[0]].path)}: {why(bad[0])} ({len(bad)} unreadable in all; "
            "set data.skip_bad: true to skip them)"
        )
    for i in bad:
        skipped.add("unreadable image", f"{filename(records[i].path)}: {why(i)}")


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
