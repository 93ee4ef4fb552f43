"""Shared fixtures: a tiny synthetic dataset and tiny recipes that train in seconds."""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path
from typing import Any

import pytest

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
# keep the tests' image caches and content index out of the home folder
os.environ.setdefault("DRSEARCH_CACHE", tempfile.mkdtemp(prefix="drsearch-test-cache-"))

from drsearch.config import Recipe, parse_config, set_dotted  # noqa: E402
from drsearch.data.synth import write_synthetic_dataset  # noqa: E402

#: What every classifier study's search space covers (demo, effb2).
USUAL_KNOBS = frozenset(
    {
        "optim.lr",
        "optim.backbone_lr_mult",
        "schedule.warmup_epochs",
        "schedule.name",
        "loss.name",
        "loss.alpha",
        "loss.gamma",
        "loss.class_weights.3",
        "loss.class_weights.4",
        "augment.mixup_alpha",
        "augment.cutmix_alpha",
        "optim.weight_decay",
        "model.drop_rate",
        "train.batch_size",
    }
)


def sampled_recipes(base: Recipe, space: Any, n: int, seed: int = 0) -> list[Recipe]:
    """``n`` random trials of ``space`` over ``base``, each validated as a whole recipe."""
    import optuna

    from drsearch.config.space import sample, trial_recipe

    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=seed))
    recipes = []
    for _ in range(n):
        trial = study.ask()
        recipes.append(trial_recipe(base, sample(trial, space, base), f"trial {trial.number}"))
        study.tell(trial, 0.0)
    return recipes


@pytest.fixture(scope="session")
def tiny_dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """80 synthetic fundus images (48 px, balanced grades) in the APTOS layout."""
    root = tmp_path_factory.mktemp("synth")
    return write_synthetic_dataset(root, n=80, size=48, seed=1, imbalance="balanced")


def png_header_only(width: int, height: int) -> bytes:
    """A well-formed PNG that claims ``width x height`` pixels and holds almost no data."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    idat = zlib.compress(b"\0" * 64)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


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
    return parse_config(Recipe, tiny_recipe_dict(root, **dotted), "test")


def write_tiny_study(
    tmp_path: Path,
    root: Path,
    space: str,
    name: str = "tiny",
    recipe_overrides: dict[str, Any] | None = None,
    **study: Any,
) -> Path:
    """A study file over the tiny dataset; ``study`` keys override the study's sections."""
    import yaml

    recipe = tiny_recipe_dict(root, **(recipe_overrides or {}))
    (tmp_path / "recipe.yaml").write_text(yaml.safe_dump(recipe))
    (tmp_path / "space.yaml").write_text(space)
    data: dict[str, Any] = {
        "name": name,
        "recipe": str(tmp_path / "recipe.yaml"),
        "search_space": str(tmp_path / "space.yaml"),
        "objective": {
            "metric": "accuracy",
            "constraints": [{"metric": "sensitivity_pdr", "min": 0.5}],
        },
        "pruner": {"grace_period": 1, "reduction_factor": 2},
        "sampler": {"name": "random", "seed": 0},
        "budget": {"n_trials": 2},
        "resources": {"cpus_per_trial": 1, "max_concurrent": 1},
        "executor": "local",
        "run_root": str(tmp_path / "runs"),
    }
    data.update(study)
    if "mode" not in data["pruner"]:  # these tests were written for stopping ASHA with eta 3
        # (the defaults before issue 24); promotion ASHA, now the default, has its own
        data["pruner"] = {"mode": "stopping", "reduction_factor": 3, **data["pruner"]}
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def peek_trials(db: Path) -> list[tuple[int, str, int]]:
    """``(number, state, epochs reported)`` of every trial in a SQLite study file that a
    runner may still be creating, read-only: never creates the file, the schema or a lock,
    so a test that watches a running study cannot race the runner creating it (opening it
    with Optuna would create the tables: "table trials already exists" in the runner). Empty
    while there is nothing to read yet."""
    import sqlite3

    if not db.is_file():
        return []
    try:
        with contextlib.closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True)) as conn:
            rows = conn.execute(
                "SELECT t.number, t.state, COUNT(v.trial_intermediate_value_id) FROM trials t "
                "LEFT JOIN trial_intermediate_values v ON v.trial_id = t.trial_id "
                "GROUP BY t.trial_id ORDER BY t.number"
            ).fetchall()
    except sqlite3.Error:  # tables not created yet, or locked for a moment
        return []
    return [(int(n), str(state), int(k)) for n, state, k in rows]


@pytest.fixture(scope="session")
def ray_cluster() -> Any:
    """One local Ray instance for every test that runs the Ray executor."""
    from drsearch.search.runners.ray import ray_session

    with ray_session(None, num_cpus=2):
        yield
