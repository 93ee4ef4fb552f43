"""Content identity of image files: SHA-1 of the bytes, remembered per (path, size, mtime).

Each file is read and hashed once; later runs look the hash up in an index in the cache
folder and re-read a file only when its size or modification time changed. The index is
rewritten atomically; concurrent runs may each add entries, and a lost entry only costs
one more read later.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from pathlib import Path

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
                sha = hashlib.sha1(record.path.read_bytes()).hexdigest()
                index[key] = sha
                added = True
        except OSError:
            # unreadable: decoding it fails next, and data.skip_bad decides (skip or stop)
            sha = f"unreadable:{record.path}"
        out.append(sha)
    if added:
        write_text_atomic(index_path, json.dumps(index))
    return out


def cross_split_duplicates(
    ids: Sequence[str], train_idx: Sequence[int], val_idx: Sequence[int]
) -> list[int]:
    """Validation indices whose file content also appears in training."""
    in_train = {ids[i] for i in train_idx}
    return [int(i) for i in val_idx if ids[i] in in_train]
