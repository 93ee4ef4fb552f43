"""The one rule for resuming: a checkpoint is the truth, and only a recipe that agrees with it
may continue it.

``RESUMABLE_CHANGES`` lists what may differ (where the data and weights live, speed settings,
provenance); any other change (LR, weight decay, backbone multiplier, epochs...) would be
silently overridden by the optimizer and schedule state, so ``check_resumable`` refuses it
with the keys and values, and refuses a checkpoint whose data fingerprint differs. The search
layer asks ``resume_changes`` before letting a re-run take over a failed trial's checkpoint."""

from __future__ import annotations

import fnmatch
import json
from pathlib import Path
from typing import Any

from drsearch.config.recipe import Recipe
from drsearch.errors import TrainingError
from drsearch.io import flatten

#: Recipe keys that may differ between a checkpoint and the run resuming it: where the data
#: and weights live (the data fingerprint is compared instead), how fast, and provenance.
#: Any other change (LR, weight decay, backbone multiplier, epochs, ...) would be silently
#: overridden by the optimizer and schedule state, so resuming with it is refused.
RESUMABLE_CHANGES = (
    "data.root",
    "data.csv",
    "data.sources.*.root",
    "data.sources.*.csv",
    "data.cache",
    "data.cache_dir",
    "data.cache_max_gb",
    "data.num_workers",
    "model.pretrained",
    "train.device",
    "train.threads",
    "train.eval_batch_size",
    "pinned",
    "pinned.*",
)


def check_resumable(
    path: Path, state: dict[str, Any], recipe: Recipe, root: Path, fingerprint: dict[str, Any]
) -> None:
    """Refuse a checkpoint of another recipe or other data (the checkpoint is the truth)."""
    saved = json.loads(state["recipe"]) if state.get("recipe") else None
    if saved is None and (root / "config.yaml").is_file():
        import yaml

        saved = yaml.safe_load((root / "config.yaml").read_text())
    if saved is not None:
        changed = resume_changes(saved, recipe.model_dump(mode="json"))
        if changed:
            listed = ", ".join(f"{k} {a!r} -> {b!r}" for k, (a, b) in changed.items())
            raise TrainingError(
                f"{path}: cannot resume: the recipe changed since this checkpoint "
                f"({listed}); its optimizer and schedule state would silently keep the old "
                f"values. Resume with the recipe in {root / 'config.yaml'}, or "
                "start a new run (another --out) from these weights with model.pretrained: "
                f"{path}"
            )
    info = root / "run.json"
    if info.is_file():
        before = json.loads(info.read_text()).get("data_fingerprint") or {}
        now = fingerprint
        keys = ("images_sha256", "split_sha256", "test_sha256")
        if before and any(k in before and before[k] != now.get(k) for k in keys):
            raise TrainingError(
                f"{path}: cannot resume: the data differ from the run's (image list or "
                f"validation split fingerprint changed since {info}); start a new run"
            )


def resume_changes(saved: dict[str, Any], current: dict[str, Any]) -> dict[str, tuple[Any, Any]]:
    """Recipe keys whose value differs between a checkpoint's recipe and the current one,
    apart from ``RESUMABLE_CHANGES``."""
    before, after = flatten(saved), flatten(current)
    return {
        key: (before.get(key), after.get(key))
        for key in sorted(before.keys() | after.keys())
        if before.get(key) != after.get(key)
        and not any(fnmatch.fnmatchcase(key, pattern) for pattern in RESUMABLE_CHANGES)
    }
