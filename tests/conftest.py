"""Shared fixtures: a tiny synthetic dataset and tiny recipes that train in seconds."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

from drsearch.config import Recipe, build_model, set_dotted  # noqa: E402
from drsearch.data.synth import write_synthetic_dataset  # noqa: E402


@pytest.fixture(scope="session")
def tiny_dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """80 synthetic fundus images (48 px, balanced grades) in the APTOS layout."""
    root = tmp_path_factory.mktemp("synth")
    return write_synthetic_dataset(root, n=80, size=48, seed=1, imbalance="balanced")


def tiny_recipe_dict(root: Path, **overrides: Any) -> dict[str, Any]:
    data: dict[str, Any] = {
        "data": {"kind": "aptos2019", "root": str(root), "image_size": 32, "val_fraction": 0.25},
        "model": {"name": "resnet10t"},
        "optim": {"lr": 2e-3},
        "schedule": {"name": "cosine", "warmup_epochs": 1},
        "augment": {"strength": 0.5},
        "train": {"epochs": 3, "batch_size": 16, "seed": 3, "threads": 2},
    }
    for key, value in overrides.items():
        set_dotted(data, key, value)
    return data


def make_recipe(root: Path, **overrides: Any) -> Recipe:
    """A validated tiny recipe; ``overrides`` use dotted keys with ``__`` for dots."""
    dotted = {k.replace("__", "."): v for k, v in overrides.items()}
    return build_model(Recipe, tiny_recipe_dict(root, **dotted), "test")
