"""A study trial -> a pinned training recipe that retrains exactly, and the checks on retrain.

The pinned recipe is the trial's fully resolved ``config.yaml`` (no ranges left) plus a
``pinned:`` section: the seed, the data fingerprint, the versions it ran with, the git commit
and its provenance (study, trial, metrics). ``drsearch train`` compares the pinned versions
and fingerprint with what it finds and warns, or refuses with ``--strict``.
"""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

from optuna.trial import FrozenTrial, TrialState

from drsearch.config.loading import load_recipe, recipe_to_yaml, with_relative_paths
from drsearch.config.recipe import Pinned, Recipe
from drsearch.config.study import LoadedStudy
from drsearch.errors import ConfigError
from drsearch.io import write_text_atomic
from drsearch.search.database import masked_url, open_existing

#: Versions whose difference is reported when a pinned recipe is retrained.
CHECKED_VERSIONS = ("python", "torch", "timm", "albumentations", "numpy", "drsearch")
_PROVENANCE_METRICS = (
    "thresholds",
    "accuracy",
    "qwk",
    "balanced_accuracy",
    "sensitivity",
    "specificity",
    "sensitivity_severe_npdr",
    "sensitivity_pdr",
    "min_specificity",
    "referable_auc",
    "best_epoch",
    "epochs_completed",
)


def select_trial(loaded: LoadedStudy, which: str, trained_only: bool = True) -> FrozenTrial:
    """``best`` (the best feasible trial) or a trial number (COMPLETE or PRUNED unless not
    ``trained_only``: a failed trial's run folder can be diagnosed too)."""
    cfg = loaded.config
    study = open_existing(cfg, loaded.path)
    if which == "best":
        try:
            return study.best_trial
        except ValueError:
            raise ConfigError(
                f"{loaded.path}: study {cfg.name!r} has no feasible complete trial yet; "
                "pick one with --trial N"
            ) from None
    if not study.trials:
        raise ConfigError(f"{loaded.path}: study {cfg.name!r} has no trial yet; run it first")
    if not which.isdigit() or int(which) >= len(study.trials):
        raise ConfigError(
            f"--trial: expected 'best' or a trial number < {len(study.trials)}, got {which!r}"
        )
    trial = study.trials[int(which)]
    if trained_only and trial.state not in (TrialState.COMPLETE, TrialState.PRUNED):
        raise ConfigError(f"--trial: trial {which} is {trial.state.name}; export a COMPLETE one")
    return trial


def pinned_recipe(loaded: LoadedStudy, trial: FrozenTrial) -> Recipe:
    """The trial's resolved recipe with its ``pinned`` section filled in."""
    run_dir = Path(str(trial.user_attrs.get("run_dir", "")))
    config, info = run_dir / "config.yaml", run_dir / "run.json"
    if not config.is_file() or not info.is_file():
        raise ConfigError(
            f"trial {trial.number}: its run folder {run_dir} is missing config.yaml or run.json"
        )
    recipe = load_recipe(config)
    run = json.loads(info.read_text())
    pinned = Pinned(
        seed=recipe.train.seed,
        versions=run.get("versions", {}),
        data_fingerprint=run.get("data_fingerprint", {}),
        git_commit=git_commit(),
        provenance={
            "study": loaded.config.name,
            "study_file": str(loaded.path),
            "storage": masked_url(loaded.config.storage_url()),
            "trial": trial.number,
            "state": trial.state.name,
            "value": trial.value,
            "params": trial.params,
            "metrics": {k: trial.user_attrs.get(k) for k in _PROVENANCE_METRICS},
            "run_dir": str(run_dir),
            "exported_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        },
    )
    # paths as a user writes them: relative to the directory drsearch runs in, where they lie
    # under it (a study resolved them to absolute ones for its trials)
    return with_relative_paths(recipe, Path.cwd()).model_copy(update={"pinned": pinned})


def export_weights(trial: FrozenTrial, study: str, recipe_file: Path, out: Path) -> int:
    """Write the trial's best-epoch weights (its ``best.pt``) to ``out`` as a plain state dict
    with what they belong to: study, trial, epoch and the SHA-256 of the pinned recipe file.
    Only tensors, numbers and strings: it loads with ``weights_only=True``, and as
    ``model.pretrained`` of the pinned recipe. Returns the epoch."""
    import hashlib

    from drsearch.train.checkpoint import BEST, atomic_save, load_weights_only

    run_dir = Path(str(trial.user_attrs.get("run_dir", "")))
    source = run_dir / "checkpoints" / BEST
    if not source.is_file():
        raise ConfigError(
            f"trial {trial.number}: no best-epoch weights at {source} (its run folder is gone); "
            "export the recipe without --weights and retrain it"
        )
    state = load_weights_only(
        source, str(source), "retrain the exported recipe instead", ConfigError
    )
    if not isinstance(state, dict) or not isinstance(state.get("model"), dict):
        raise ConfigError(f"{source}: not a drsearch best-epoch checkpoint")
    epoch = int(state.get("epoch", 0))
    best = trial.user_attrs.get("best_epoch")
    if best is not None and int(best) != epoch:
        raise ConfigError(
            f"{source} holds epoch {epoch}, but trial {trial.number}'s best epoch is {best} "
            "(the run was trained before best epochs followed the study's objective); retrain "
            "the exported recipe"
        )
    payload = {
        "state_dict": state["model"],
        "epoch": epoch,
        "trial": trial.number,
        "study": study,
        "recipe_sha256": hashlib.sha256(recipe_file.read_bytes()).hexdigest(),
    }
    atomic_save(payload, out)
    return epoch


def write_pinned(recipe: Recipe, out: Path) -> None:
    assert recipe.pinned is not None
    prov = recipe.pinned.provenance
    header = (
        f"# Pinned by drsearch export from study {prov['study']}, trial {prov['trial']}.\n"
        "# Retrain with: drsearch train THIS_FILE  (--strict refuses version/data drift)\n"
    )
    write_text_atomic(out, header + recipe_to_yaml(recipe))


def git_commit() -> str | None:
    """The checkout's commit (with ``-dirty`` for uncommitted changes), if there is one."""
    try:
        head = subprocess.run(
            ["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            timeout=10,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return f"{head}-dirty" if dirty else head


def drift(recipe: Recipe) -> list[str]:
    """How the installed versions and the data differ from what the recipe pins."""
    if recipe.pinned is None:
        return []
    from drsearch.data.fingerprint import data_fingerprint
    from drsearch.data.records import Skipped
    from drsearch.data.sources import load_records
    from drsearch.data.split import split_indices
    from drsearch.train.outputs import installed_versions

    found: list[str] = []
    now = installed_versions()
    for name in CHECKED_VERSIONS:
        pinned = recipe.pinned.versions.get(name)
        if pinned is not None and pinned != now.get(name):
            found.append(f"{name} {now.get(name)} is installed, the recipe pins {pinned}")
    records = load_records(recipe.data, Skipped())
    train_idx, val_idx = split_indices(records, recipe.data.val_fraction, recipe.data.seed)
    current = data_fingerprint(records, train_idx, val_idx)
    for key, what in (
        ("images_sha256", "image list (ids, labels, file sizes)"),
        ("split_sha256", "validation split"),
    ):
        pinned_value = recipe.pinned.data_fingerprint.get(key)
        if pinned_value is not None and pinned_value != current[key]:
            found.append(
                f"the {what} differs from the pinned one "
                f"({current[key][:12]} != {pinned_value[:12]})"
            )
    return found
