"""Files and folders drsearch makes: only inside the run root, and only its own are removed.

Every folder a study creates is checked to lie inside its run root after resolving symlinks,
and is marked with a ``.drsearch-owned`` file; deleting (``--smoke`` starting over,
``train --overwrite``) only ever removes a marked folder, inside the root it was made under.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from drsearch.errors import ConfigError

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
