"""The run folder: what a training run leaves behind, each file written safely.

``config.yaml`` (resolved recipe), ``run.json`` (data counts, steps, resolved weights,
versions), ``split.csv``, ``metrics.jsonl`` (one line per epoch), ``metrics.json`` (the best
epoch), ``predictions.csv`` (validation predictions at the best epoch) and ``checkpoints/``.
"""

from __future__ import annotations

import csv
import json
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from drsearch.config.loading import recipe_to_yaml
from drsearch.config.recipe import Recipe


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
        with self.metrics_log.open("a") as fh:
            fh.write(json.dumps(to_jsonable(record)) + "\n")
            fh.flush()
            os.fsync(fh.fileno())

    def read_epochs(self) -> list[dict[str, Any]]:
        """The logged epochs; a last line cut short by a kill during the append is ignored."""
        if not self.metrics_log.is_file():
            return []
        lines = [line for line in self.metrics_log.read_text().splitlines() if line.strip()]
        records = []
        for i, line in enumerate(lines):
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError:
                if i < len(lines) - 1:
                    raise
        return records

    def reconcile_epochs(self, epoch: int, record: dict[str, Any] | None) -> list[dict[str, Any]]:
        """On resume, make the log agree with the checkpoint of ``epoch``: drop lines of later
        epochs (they will be redone) and restore the checkpoint's own line (``record``) if a
        kill came between saving the checkpoint and appending it."""
        kept = [r for r in self.read_epochs() if r["epoch"] <= epoch]
        if record is not None and (not kept or kept[-1]["epoch"] < epoch):
            kept.append(record)
        write_text_atomic(self.metrics_log, "".join(json.dumps(r) + "\n" for r in kept))
        return kept

    def write_predictions(self, ids: Sequence[str], labels: np.ndarray, probs: np.ndarray) -> None:
        """``predictions.csv``: ``id,label,pred,p0..p4`` for the validation set."""
        path = self.root / "predictions.csv"
        tmp = path.with_name(f".{path.name}.tmp")
        with tmp.open("w", newline="") as fh:
            writer = csv.writer(fh)
            writer.writerow(["id", "label", "pred", *(f"p{c}" for c in range(probs.shape[1]))])
            for image_id, label, row in zip(ids, labels, probs, strict=True):
                writer.writerow(
                    [image_id, int(label), int(row.argmax()), *(f"{p:.6f}" for p in row)]
                )
        os.replace(tmp, path)


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


def flatten(data: Any, prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": [1, 2]}}`` -> ``{"a.b.0": 1, "a.b.1": 2}`` (dotted recipe keys)."""
    if isinstance(data, dict) and data:
        items = data.items()
    elif isinstance(data, list) and data:
        items = enumerate(data)
    else:
        return {prefix: data}
    out: dict[str, Any] = {}
    for key, value in items:
        out.update(flatten(value, f"{prefix}.{key}" if prefix else str(key)))
    return out


def write_text_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


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
