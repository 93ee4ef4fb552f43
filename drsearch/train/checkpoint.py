"""Full-state checkpoints, written atomically (temporary file, fsync, rename).

A checkpoint holds everything needed to continue exactly: model, optimizer, LR controller,
grad scaler, EMA, the RNG states, the epoch, the best metric and the early-stopping count.
A kill at any moment leaves either the previous checkpoint or the new one, never half a file.
"""

from __future__ import annotations

import os
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from drsearch.errors import TrainingError

LAST = "last.pt"
BEST = "best.pt"


def atomic_save(obj: Any, path: Path) -> None:
    """``torch.save`` to a temporary name in the same folder, fsync, then rename."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with tmp.open("wb") as fh:
        torch.save(obj, fh)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def load(path: Path) -> dict[str, Any]:
    """Read a checkpoint written by ``atomic_save``."""
    if not path.is_file():
        raise TrainingError(f"{path}: no checkpoint to resume from; run without --resume")
    return torch.load(path, map_location="cpu", weights_only=False)


def rng_state() -> dict[str, Any]:
    """Every global RNG a training step may draw from."""
    state = {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
