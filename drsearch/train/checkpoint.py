"""Full-state checkpoints, written atomically (temporary file, fsync, rename).

A checkpoint holds everything needed to continue exactly: model, optimizer, LR controller,
grad scaler, EMA, the RNG states, the epoch, the best metric and the early-stopping count,
the epoch's own log record and the recipe it was trained with. A kill at any moment leaves
either the previous checkpoint or the new one, never half a file.

Checkpoints hold only tensors, numbers, strings and containers of them, and are read with
``torch.load(weights_only=True)``: a crafted file cannot run code when it is loaded.
"""

from __future__ import annotations

import os
import pickle
import random
import stat
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from drsearch.errors import DrsearchError, TrainingError
from drsearch.io import atomic_write

LAST = "last.pt"
BEST = "best.pt"


def atomic_save(obj: Any, path: Path) -> None:
    """``torch.save`` to a temporary name in the same folder, fsync, then rename."""
    atomic_write(path, lambda fh: torch.save(obj, fh))


def load(path: Path) -> dict[str, Any]:
    """Read a checkpoint written by ``atomic_save`` (weights only: no code runs)."""
    if not path.is_file():
        raise TrainingError(f"{path}: no checkpoint to resume from; run without --resume")
    state = load_weights_only(path, str(path), "delete it to start the run over", TrainingError)
    if not isinstance(state, dict) or "epoch" not in state:
        raise TrainingError(f"{path}: not a drsearch checkpoint; delete it to start over")
    return state


def load_weights_only(
    path: Path, what: str, fix: str, error: type[DrsearchError] = TrainingError
) -> Any:
    """``torch.load(weights_only=True)``: a file holding anything but tensors, numbers and
    strings is refused, never unpickled; a damaged one is named; anything but a regular file
    (a FIFO would block the read forever, a device never end) is refused before it is opened.
    Each in one line."""
    try:
        kind = stat.S_IFMT(os.stat(path).st_mode)
    except OSError as exc:
        raise error(f"{what}: cannot be read ({exc.strerror}); {fix}") from None
    if kind != stat.S_IFREG:
        raise error(f"{what}: not a regular file (a FIFO, device, socket or folder); {fix}")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        raise error(
            f"{what}: refused: it holds objects other than tensors and numbers "
            f"({str(exc).splitlines()[0][:160]}); drsearch never unpickles code; {fix}"
        ) from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError) as exc:
        raise error(
            f"{what}: not a readable file of tensors ({type(exc).__name__}): it is damaged or "
            f"truncated; {fix}"
        ) from None


def rng_state() -> dict[str, Any]:
    """Every global RNG a training step may draw from, as tensors and plain numbers."""
    version, internal, gauss = random.getstate()
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state: dict[str, Any] = {
        "python": [version, torch.tensor(internal, dtype=torch.int64), gauss],
        "numpy": [kind, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, cached],
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(int(x) for x in internal.tolist()), gauss))
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
