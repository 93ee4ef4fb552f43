"""Content identity of image files: SHA-1 of the bytes, remembered per (path, size, mtime).

Each file is read and hashed once (a regular file only: ``decode.open_regular``); later runs
look the hash up in an index in the cache folder and re-read a file only when its size or
modification time changed. The index is rewritten atomically; concurrent runs may each add
entries, and a lost entry only costs one more read later.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Sequence
from pathlib import Path

from drsearch.data.decode import ImageError, open_regular
from drsearch.data.records import ImageRecord
from drsearch.io import write_text_atomic

INDEX_NAME = "content-index.json"


def content_ids(records: Sequence[ImageRecord], cache_dir: Path) -> list[str]:
    """The SHA-1 of each record's file, in record order."""
    index_path = cache_dir / INDEX_NAME
    try:
        index: dict[str, str] = json.loads(index_path.read_text())
    except (OSError, ValueError):
        index = {}
    out, added = [], False
    for record in records:
        try:
            st = record.path.stat()
            key = f"{record.path.resolve()}|{st.st_size}|{st.st_mtime_ns}"
            sha = index.get(key)
            if sha is None:
                sha = file_sha1(record.path)
                index[key] = sha
                added = True
        except (OSError, ImageError):
            # unreadable: decoding it fails next (with the reason), and data.skip_bad decides
            sha = f"unreadable:{record.path}"
        out.append(sha)
    if added:
        write_text_atomic(index_path, json.dumps(index))
    return out


def file_sha1(path: Path) -> str:
    """The SHA-1 of a regular file's bytes, read in blocks (``ImageError`` for a FIFO, device
    or other file that is not regular: reading one could block forever)."""
    h = hashlib.sha1()
    fd = open_regular(path)
    try:
        while block := os.read(fd, 1 << 20):
            h.update(block)
    finally:
        os.close(fd)
    return h.hexdigest()


def cross_split_duplicates(
    ids: Sequence[str], train_idx: Sequence[int], val_idx: Sequence[int]
) -> list[int]:
    """Validation indices whose file content also appears in training."""
    in_train = {ids[i] for i in train_idx}
    return [int(i) for i in val_idx if ids[i] in in_train]
