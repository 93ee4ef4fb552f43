"""Label tables -> image records for what a recipe names: one dataset, or several combined.

The layout of each dataset is read by its adapter (``drsearch.data.adapters``)."""

from __future__ import annotations

import os
import shutil
import tempfile
from dataclasses import replace
from pathlib import Path

from drsearch.config.recipe import DataConfig
from drsearch.data.adapters import ADAPTERS
from drsearch.data.records import ImageRecord, Skipped
from drsearch.data.synth import write_synthetic_dataset
from drsearch.errors import DataError


def load_records(cfg: DataConfig, skipped: Skipped) -> list[ImageRecord]:
    """Read the label table named by ``cfg``; check labels and that every image exists.

    With ``data.sources``, every source is read and its records are tagged with the source
    name (also prefixed to ids and patients, so they never collide) and its ``use``.
    """
    if cfg.sources:
        return _combined(cfg, skipped)
    if cfg.kind == "synthetic":
        ensure_synthetic(cfg)
    records = ADAPTERS[cfg.kind](cfg, skipped)
    if not records:
        raise DataError(f"{_table_path(cfg)}: no usable images")
    return records


def _combined(cfg: DataConfig, skipped: Skipped) -> list[ImageRecord]:
    out: list[ImageRecord] = []
    for source in cfg.sources:
        name = source.name or source.kind
        single = cfg.model_copy(
            update={"kind": source.kind, "root": source.root, "csv": source.csv, "sources": []}
        )
        for r in load_records(single, skipped):
            patient = f"{name}:{r.patient_id}" if r.patient_id else None
            out.append(
                replace(r, id=f"{name}:{r.id}", patient_id=patient, source=name, use=source.use)
            )
    return out


def ensure_synthetic(cfg: DataConfig) -> None:
    """Generate the synthetic set into ``data.root`` on first use.

    The set is written into a private folder beside ``root`` and renamed into place, so a
    concurrent reader (another runner's trial) never sees a half-written image; when two
    processes race, the first rename wins and the other's copy is removed.
    """
    if (cfg.root / "train.csv").is_file():
        return
    s = cfg.synthetic
    if cfg.root.exists():  # a folder the user made: fill it in place
        write_synthetic_dataset(cfg.root, n=s.n, size=s.size, seed=s.seed, imbalance=s.imbalance)
        return
    cfg.root.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{cfg.root.name}.partial-", dir=cfg.root.parent))
    try:
        write_synthetic_dataset(tmp, n=s.n, size=s.size, seed=s.seed, imbalance=s.imbalance)
        os.rename(tmp, cfg.root)
    except OSError:
        if not (cfg.root / "train.csv").is_file():
            raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _table_path(cfg: DataConfig) -> Path:
    if cfg.kind == "csv" and cfg.csv is not None:
        return cfg.csv
    return cfg.root if cfg.kind not in ("synthetic", "aptos2019") else cfg.root / "train.csv"
