"""Files, records and keys: the one home of how drsearch writes and reads.

- Atomic writes: a temporary file in the same folder, flushed, fsynced and renamed over the
  target, so a kill leaves the old file or the new one, never half of one.
- JSON lines (``metrics.jsonl``, ``resumes.jsonl``): appended with fsync, read back with a
  last line cut short by a kill ignored.
- Dotted keys (``optim.lr``, ``loss.class_weights.3``): get, set, flatten.
- Folders: created only inside the run root (symlinks resolved), marked with a
  ``.drsearch-owned`` file; deleting (``--smoke`` starting over) removes only marked folders.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

from drsearch.errors import ConfigError


# -- atomic writes -----------------------------------------------------------------------
def atomic_write(path: Path, write: Callable[[IO[bytes]], None]) -> None:
    """Call ``write`` on a temporary file beside ``path``, fsync it, then rename it over."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with tmp.open("wb") as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_text_atomic(path: Path, text: str) -> None:
    atomic_write(path, lambda fh: fh.write(text.encode("utf-8")))


# -- JSON lines ----------------------------------------------------------------------------
def append_jsonl(path: Path, record: Any) -> None:
    """Append one JSON line and fsync, so a kill cannot lose it."""
    with path.open("a") as fh:
        fh.write(json.dumps(record) + "\n")
        fh.flush()
        os.fsync(fh.fileno())


def read_jsonl(path: Path) -> list[Any]:
    """The records of a JSON-lines file ([] when there is none); a last line cut short by a
    kill during an append is ignored, a damaged line elsewhere is an error."""
    if not path.is_file():
        return []
    lines = [line for line in path.read_text().splitlines() if line.strip()]
    records = []
    for i, line in enumerate(lines):
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            if i < len(lines) - 1:
                raise ConfigError(
                    f"{path}: line {i + 1} is not JSON; the file is damaged"
                ) from None
    return records


# -- dotted keys ---------------------------------------------------------------------------
def get_dotted(data: Any, dotted: str) -> Any:
    """``data['a'][0]`` for ``'a.0'``; ``None`` where there is nothing at that key."""
    for part in dotted.split("."):
        if isinstance(data, list) and part.isdigit() and int(part) < len(data):
            data = data[int(part)]
        elif isinstance(data, dict):
            data = data.get(part)
        else:
            return None
    return data


def set_dotted(data: dict[str, Any], dotted: str, value: Any) -> None:
    """Set ``data['a']['b'] = value`` for ``dotted='a.b'``, creating mappings on the way."""
    node = data
    parts = dotted.split(".")
    for part in parts[:-1]:
        child = node.get(part)
        if not isinstance(child, dict):
            child = {}
            node[part] = child
        node = child
    node[parts[-1]] = value


def flatten(data: Any, prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": [1, 2]}}`` -> ``{"a.b.0": 1, "a.b.1": 2}`` (dotted recipe keys)."""
    if isinstance(data, dict) and data:
        items: Any = data.items()
    elif isinstance(data, list) and data:
        items = enumerate(data)
    else:
        return {prefix: data}
    out: dict[str, Any] = {}
    for key, value in items:
        out.update(flatten(value, f"{prefix}.{key}" if prefix else str(key)))
    return out


# -- folders drsearch owns -----------------------------------------------------------------

MARKER = ".drsearch-owned"


def inside(path: Path, root: Path) -> Path:
    """``path`` resolved (symlinks followed); a ``ConfigError`` if it is not under ``root``."""
    resolved, base = path.resolve(), root.resolve()
    if resolved != base and not resolved.is_relative_to(base):
        raise ConfigError(
            f"{path}: resolves to {resolved}, outside the run root {base}; drsearch only "
            "writes inside run_root (check the study name, run_root and any symlinks)"
        )
    return resolved


def owned_dir(path: Path, root: Path, what: str) -> Path:
    """Create ``path`` (inside ``root``) if needed and mark it as made by drsearch."""
    inside(path, root)
    fresh = not path.exists()
    path.mkdir(parents=True, exist_ok=True)
    inside(path, root)  # a symlink planted meanwhile
    marker = path / MARKER
    if fresh or not marker.exists() and not any(path.iterdir()):
        marker.write_text(json.dumps({"made_by": "drsearch", "what": what}) + "\n")
    return path


def is_owned(path: Path) -> bool:
    return (path / MARKER).is_file() and not path.is_symlink()


def remove_owned(path: Path, root: Path) -> bool:
    """Delete ``path`` if drsearch made it (marked) inside ``root``; ``False`` if it is absent.
    Anything else is refused with a one-line error and left alone."""
    if not path.exists() and not path.is_symlink():
        return False
    inside(path, root)
    if not path.is_dir() or not is_owned(path):
        raise ConfigError(
            f"{path}: not deleting it: drsearch did not make it (no {MARKER} file in it); "
            "move it away or choose another run_root"
        )
    shutil.rmtree(path)
    return True
