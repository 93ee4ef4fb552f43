"""The run folder: what a training run leaves behind, each file written safely.

``config.yaml`` (resolved recipe), ``run.json`` (data counts, steps, resolved weights,
versions), ``split.csv``, ``metrics.jsonl`` (one line per epoch), ``metrics.json`` (the best
epoch), ``predictions.csv`` (validation predictions at the best epoch) and ``checkpoints/``.
"""

from __future__ import annotations

import csv
import io
import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from drsearch.config.loading import recipe_to_yaml
from drsearch.config.recipe import Recipe
from drsearch.io import append_jsonl, flatten, read_jsonl, write_text_atomic


class RunFolder:
    """Paths and writers of one run folder."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.checkpoints = root / "checkpoints"

    @property
    def metrics_log(self) -> Path:
        return self.root / "metrics.jsonl"

    def create(self) -> None:
        """Make the folder (marked as drsearch's own) and clear what a kill left half-done."""
        from drsearch.io import MARKER

        fresh = not self.root.exists()
        self.checkpoints.mkdir(parents=True, exist_ok=True)
        if fresh:
            (self.root / MARKER).write_text('{"made_by": "drsearch", "what": "run folder"}\n')
        for partial in self.checkpoints.glob(".*.pt.*.tmp"):  # a save cut short by a kill
            partial.unlink(missing_ok=True)

    def write_config(self, recipe: Recipe) -> None:
        write_text_atomic(self.root / "config.yaml", recipe_to_yaml(recipe))

    def record_resume(self, epoch: int, recipe: Recipe) -> None:
        """Log a resume and any recipe keys that changed since the run began to
        ``resumes.jsonl``; ``config.yaml`` then holds the recipe in force."""
        path = self.root / "config.yaml"
        before = flatten(yaml.safe_load(path.read_text())) if path.is_file() else {}
        after = flatten(recipe.model_dump(mode="json"))
        changed = {k: [before.get(k), v] for k, v in after.items() if before.get(k) != v}
        with (self.root / "resumes.jsonl").open("a") as fh:
            fh.write(json.dumps({"epoch": epoch, "changed": changed}) + "\n")
        self.write_config(recipe)

    def write_json(self, name: str, data: Any) -> None:
        write_text_atomic(self.root / name, json.dumps(to_jsonable(data), indent=2) + "\n")

    def append_epoch(self, record: dict[str, Any]) -> None:
        """Append one epoch to ``metrics.jsonl`` and fsync, so a kill cannot lose it."""
        append_jsonl(self.metrics_log, to_jsonable(record))

    def read_epochs(self) -> list[dict[str, Any]]:
        """The logged epochs; a last line cut short by a kill during the append is ignored."""
        return read_jsonl(self.metrics_log)

    def reconcile_epochs(self, epoch: int, record: dict[str, Any] | None) -> list[dict[str, Any]]:
        """On resume, make the log agree with the checkpoint of ``epoch``: drop lines of later
        epochs (they will be redone) and restore the checkpoint's own line (``record``) if a
        kill came between saving the checkpoint and appending it."""
        kept = [r for r in self.read_epochs() if r["epoch"] <= epoch]
        if record is not None and (not kept or kept[-1]["epoch"] < epoch):
            kept.append(record)
        write_text_atomic(self.metrics_log, "".join(json.dumps(r) + "\n" for r in kept))
        return kept

    def write_predictions(
        self, ids: Sequence[str], labels: np.ndarray, probs: np.ndarray, preds: np.ndarray
    ) -> None:
        """``predictions.csv``: ``id,label,pred,p0..p4`` for the validation set."""
        out = io.StringIO()
        writer = csv.writer(out)
        writer.writerow(["id", "label", "pred", *(f"p{c}" for c in range(probs.shape[1]))])
        for image_id, label, pred, row in zip(ids, labels, preds, probs, strict=True):
            writer.writerow([image_id, int(label), int(pred), *(f"{p:.6f}" for p in row)])
        write_text_atomic(self.root / "predictions.csv", out.getvalue())

    def read_predictions(self) -> tuple[list[str], np.ndarray, np.ndarray, np.ndarray]:
        """``predictions.csv`` back: ids, labels, predicted grades and probabilities (N x 5)."""
        with (self.root / "predictions.csv").open(newline="") as fh:
            rows = list(csv.reader(fh))[1:]
        ids = [r[0] for r in rows]
        labels = np.array([int(r[1]) for r in rows], dtype=np.int64)
        preds = np.array([int(r[2]) for r in rows], dtype=np.int64)
        probs = np.array([[float(x) for x in r[3:]] for r in rows], dtype=np.float64)
        return ids, labels, preds, probs.reshape(len(rows), -1)


#: What a run folder holds; ``train --overwrite`` deletes only folders made of these.
RUN_FILES = frozenset(
    {
        "config.yaml",
        "run.json",
        "split.csv",
        "metrics.jsonl",
        "metrics.json",
        "predictions.csv",
        "checkpoints",
        "resumes.jsonl",
        "confusion_matrix.csv",
        "lr_trace.csv",
    }
)


def is_run_folder(path: Path) -> bool:
    """Made by drsearch: marked, or (an older run folder) holding only run files."""
    from drsearch.io import is_owned

    if is_owned(path):
        return True
    return path.is_dir() and all(
        p.name in RUN_FILES or p.name.startswith(".") for p in path.iterdir()
    )


def to_jsonable(value: Any) -> Any:
    """Plain JSON: numpy scalars to Python, NaN/inf to ``None``, paths to strings."""
    if isinstance(value, dict):
        return {str(k): to_jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [to_jsonable(v) for v in value]
    if isinstance(value, np.ndarray):
        return to_jsonable(value.tolist())
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, Path):
        return str(value)
    return value


def installed_versions() -> dict[str, str]:
    """Versions that decide whether a run can be reproduced bit for bit."""
    import importlib
    import platform

    out = {"python": platform.python_version()}
    for package in ("torch", "timm", "albumentations", "numpy", "drsearch"):
        # the modules' own __version__: torch's carries its build (e.g. +cu130, +cpu)
        out[package] = str(getattr(importlib.import_module(package), "__version__", "unknown"))
    return out


def prepare_run_dir(run_dir: Path, resume: bool, overwrite: bool) -> None:
    """Check ``--out`` against ``--resume`` / ``--overwrite``; replace an old run only when
    it is a run folder drsearch wrote."""
    import shutil

    from drsearch.errors import ConfigError

    has_run = (run_dir / "metrics.jsonl").exists() or (run_dir / "checkpoints").exists()
    if resume and overwrite:
        raise ConfigError("--resume and --overwrite contradict each other; pick one")
    if resume and not has_run:
        raise ConfigError(f"{run_dir}: no run to resume; drop --resume or point --out at a run")
    if has_run and not resume:
        if not overwrite:
            raise ConfigError(
                f"{run_dir}: already holds a run; pass --resume to continue it, "
                "--overwrite to replace it, or --out for a new folder"
            )
        if not is_run_folder(run_dir):
            raise ConfigError(
                f"{run_dir}: --overwrite only deletes run folders drsearch wrote, and this one "
                "holds other files too; delete it yourself or pick another --out"
            )
        shutil.rmtree(run_dir)
