"""A study trial -> a pinned training recipe that retrains exactly, and the checks on retrain.

The pinned recipe is the trial's fully resolved ``config.yaml`` (no ranges left) plus a
``pinned:`` section: the seed, the data fingerprint, the versions it ran with, the git commit
and its provenance (study, trial, metrics). ``drsearch train`` compares the pinned versions
and fingerprint with what it finds and warns, or refuses with ``--strict``.
"""

from __future__ import annotations

import json
import shlex
import subprocess
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from optuna.trial import FrozenTrial, TrialState

from drsearch.config.loading import load_recipe, recipe_to_yaml, with_relative_paths
from drsearch.config.recipe import Pinned, Recipe
from drsearch.config.study import LoadedStudy
from drsearch.errors import ConfigError, NoWinner
from drsearch.io import write_text_atomic
from drsearch.search.database import masked_url, open_existing
from drsearch.states import Status, as_it_stands, status

if TYPE_CHECKING:  # torch: imported when a model is built
    from drsearch.search.shipping import Certified
    from drsearch.train.predict import TrainedModel

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
    """``best`` (the study's best: its crowned finalist once a finalist stage ran, else the
    best feasible trial), ``search-best`` (the search's own best feasible trial, whatever the
    finalists say) or a trial number (complete, pruned or paused unless not ``trained_only``:
    a failed trial's run folder can be diagnosed too). When the study names no winner, ``best``
    and ``search-best`` raise ``NoWinner`` (exit 3) for every command alike, saying why and
    what came closest: a trial that falls short is taken only by its number."""
    from drsearch.search.selection import search_best_trial
    from drsearch.search.verdict import no_winner, study_best

    cfg = loaded.config
    study = open_existing(cfg, loaded.path)
    if which in ("best", "search-best"):
        best = study_best(study) if which == "best" else None
        if best is not None and best.source == "finalists":
            if best.trial is not None:
                if best.note:
                    import sys

                    print(f"Warning: {best.note}", file=sys.stderr)
                return best.trial
            # the finalist stage named no winner: no other trial stands in for one
            raw = (
                " (--trial search-best: the search's own)"
                if search_best_trial(study) is not None
                else ""
            )
            raise NoWinner(
                f"{loaded.path}: study {cfg.name!r} names no winner: {best.note}; see the "
                f"finalists and what to try with drsearch best {shlex.quote(str(loaded.path))}"
                f", or pick a trial with --trial N{raw}"
            )
        found = search_best_trial(study)
        if found is not None:
            return found
        verdict = no_winner(study, shlex.quote(str(loaded.path)))
        why = verdict.why if verdict is not None else "no feasible complete trial"
        closest = f" (closest: {verdict.closest})" if verdict and verdict.closest else ""
        raise NoWinner(
            f"{loaded.path}: study {cfg.name!r} names no winner: {why}{closest}; see "
            f"drsearch best {shlex.quote(str(loaded.path))} for what to try, or pick a trial "
            "with --trial N"
        )
    if not study.trials:
        raise ConfigError(f"{loaded.path}: study {cfg.name!r} has no trial yet; run it first")
    if not which.isdigit() or int(which) >= len(study.trials):
        raise ConfigError(
            f"--trial: expected 'best', 'search-best' or a trial number < {len(study.trials)}, "
            f"got {which!r}"
        )
    trial = study.trials[int(which)]
    state = status(trial)
    if trained_only and state not in (Status.COMPLETE, Status.PRUNED, Status.PAUSED):
        raise ConfigError(
            f"--trial: trial {which} is {state.value}; take a complete, pruned or paused one"
        )
    return as_it_stands(trial)  # a paused trial: its best epoch so far


def pinned_recipe(
    loaded: LoadedStudy,
    trial: FrozenTrial,
    evaluation: dict[str, Any] | None = None,
    study_name: str | None = None,
) -> Recipe:
    """The trial's resolved recipe with its ``pinned`` section filled in (``evaluation``: what
    ``drsearch evaluate`` chose and measured for it, kept with the study; ``study_name``: the
    study the trial belongs to, when not the study file's own, e.g. its confirmation study)."""
    run_dir = Path(str(trial.user_attrs.get("run_dir", "")))
    config, info = run_dir / "config.yaml", run_dir / "run.json"
    if not config.is_file() or not info.is_file():
        raise ConfigError(
            f"trial {trial.number}: its run folder {run_dir} is missing config.yaml or run.json"
        )
    recipe = load_recipe(config)
    run = json.loads(info.read_text())
    pinned = Pinned(
        evaluation=evaluation,
        seed=recipe.train.seed,
        versions=run.get("versions", {}),
        data_fingerprint=run.get("data_fingerprint", {}),
        git_commit=git_commit(),
        provenance={
            "study": study_name or loaded.config.name,
            "study_file": str(loaded.path),
            "storage": masked_url(loaded.config.storage_url()),
            "trial": trial.number,
            "state": status(trial).name,  # PAUSED for a trial promotion ASHA holds
            "value": trial.value,
            "params": trial.params,
            **{
                k: trial.user_attrs[k]
                for k in ("confirm_of", "fold", "seed")
                if trial.user_attrs.get(k) is not None
            },  # fmt: skip
            "metrics": {k: trial.user_attrs.get(k) for k in _PROVENANCE_METRICS},
            "run_dir": str(run_dir),
            "exported_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        },
    )
    # paths as a user writes them: relative to the directory drsearch runs in, where they lie
    # under it (a study resolved them to absolute ones for its trials)
    return with_relative_paths(recipe, Path.cwd()).model_copy(update={"pinned": pinned})


def study_facts(loaded: LoadedStudy, study: Any) -> dict[str, Any]:
    """What a methods paragraph states about a study (``inspect.methods``): its split, search
    space, budget and what was tried, pruner, sampler, objective and finalist stage."""
    from drsearch.search.selection import FINALISTS_ATTR
    from drsearch.search.store import BUDGET_ATTR, SAMPLERS_ATTR, count_trials

    cfg, d = loaded.config, loaded.recipe.data
    counts = count_trials(study.get_trials(deepcopy=False))
    from drsearch.config.study import TEST_LOG_ATTR

    log = study.user_attrs.get(TEST_LOG_ATTR) or []
    return {
        "split": {"seed": d.seed, "test_fraction": d.test_fraction, "cv_folds": d.cv_folds},
        "space": list(loaded.space),
        "n_trials": int(
            study._storage.get_study_system_attrs(study._study_id).get(
                BUDGET_ATTR, cfg.budget.n_trials
            )
        ),
        "counts": {"complete": counts.complete, "pruned": counts.pruned, "failed": counts.failed},
        "pruner": cfg.pruner.model_dump(mode="json"),
        "sampler": cfg.sampler.label(),  # as the study file names it now
        # the samplers its trials drew from, in order (None: not recorded, an older study)
        "samplers": study._storage.get_study_system_attrs(study._study_id).get(SAMPLERS_ATTR),
        "sampler_seed": cfg.sampler.seed,
        "max_epochs": loaded.max_epochs,
        "objective": cfg.objective.model_dump(mode="json"),
        "finalists": study.user_attrs.get(FINALISTS_ATTR),
        "test_uses": len({tuple(e["trials"]) for e in log}),
    }


def evaluation_tag(trials: list[int], tta: bool = False) -> str:
    """How an evaluation is keyed (files, the study's record): by its member trials, so two
    top-k ensembles of different trials never share a record: ``trial7``, ``trials3-7-9``."""
    one = len(trials) == 1
    tag = f"trial{trials[0]}" if one else "trials" + "-".join(str(n) for n in sorted(trials))
    return tag + ("-tta" if tta else "")


def ranked_trials(loaded: LoadedStudy, top_k: int) -> list[FrozenTrial]:
    """The ``top_k`` best feasible COMPLETE trials, best first (ties: the earlier trial)."""
    study = open_existing(loaded.config, loaded.path)
    feasible = [
        t
        for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
        if t.value is not None and t.user_attrs.get("feasible")
    ]
    if not feasible:
        raise ConfigError(
            f"{loaded.path}: study {loaded.config.name!r} has no feasible complete trial yet"
        )
    return sorted(feasible, key=lambda t: (-float(t.value or 0.0), t.number))[:top_k]


def best_weights(trial: FrozenTrial) -> tuple[dict[str, Any], int]:
    """The trial's best-epoch model state dict (its ``best.pt``, read weights-only) and epoch."""
    from drsearch.train.checkpoint import BEST, load_weights_only

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
    return state["model"], epoch


def trial_model(trial: FrozenTrial) -> TrainedModel:
    """A study trial's best-epoch weights with the recipe, data fingerprint and epochs of its
    run folder."""
    from drsearch.train.outputs import RunFolder
    from drsearch.train.predict import TrainedModel

    run_dir = Path(str(trial.user_attrs.get("run_dir", "")))
    config, info = run_dir / "config.yaml", run_dir / "run.json"
    if not config.is_file() or not info.is_file():
        raise ConfigError(
            f"trial {trial.number}: its run folder {run_dir} is missing config.yaml or run.json"
        )
    weights, _ = best_weights(trial)
    return TrainedModel(
        label=f"trial {trial.number}",
        recipe=load_recipe(config),
        state_dict=weights,
        fingerprint=json.loads(info.read_text()).get("data_fingerprint") or {},
        trial=trial.number,
        log=RunFolder(run_dir).read_epochs(),
    )


def export_weights(trial: FrozenTrial, study: str, recipe_file: Path, out: Path) -> int:
    """Write the trial's best-epoch weights (its ``best.pt``) to ``out`` as a plain state dict
    with what they belong to: study, trial, epoch and the SHA-256 of the pinned recipe file.
    Only tensors, numbers and strings: it loads with ``weights_only=True``, and as
    ``model.pretrained`` of the pinned recipe. Returns the epoch."""
    import hashlib

    from drsearch.train.checkpoint import atomic_save

    weights, epoch = best_weights(trial)

    payload = {
        "state_dict": weights,
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
    from drsearch.data.fingerprint import listed_fingerprint
    from drsearch.data.records import Skipped
    from drsearch.data.sources import load_records
    from drsearch.data.split import data_split
    from drsearch.train.outputs import installed_versions

    found: list[str] = []
    now = installed_versions()
    for name in CHECKED_VERSIONS:
        pinned = recipe.pinned.versions.get(name)
        if pinned is not None and pinned != now.get(name):
            found.append(f"{name} {now.get(name)} is installed, the recipe pins {pinned}")
    d = recipe.data
    loaded = load_records(d, Skipped())
    current = listed_fingerprint(loaded, data_split(loaded, d))
    for key, what in (
        ("images_sha256", "image list (ids, labels, file sizes)"),
        ("split_sha256", "validation split"),
        ("test_sha256", "held-out test split"),
    ):
        pinned_value = recipe.pinned.data_fingerprint.get(key)
        if pinned_value is not None and pinned_value != current[key]:
            found.append(
                f"the {what} differs from the pinned one "
                f"({current[key][:12]} != {pinned_value[:12]})"
            )
    return found


def export_ensemble(
    loaded: LoadedStudy,
    trials: list[FrozenTrial],
    out: Path,
    views: list[str],
    attrs: dict[str, Any],
    certified: Certified | None = None,
) -> list[Path]:
    """Write ``trials`` as an ensemble: each member's pinned recipe and best-epoch weights in
    the folder ``out`` names without its suffix, and ``out`` listing them (relative to its
    folder) with the views and what the study's evaluation of this ensemble chose. With
    ``certified``, the members are the crowned finalist's confirmation runs and the file
    carries their certificate (``search.shipping``). Returns the member recipe files."""
    import yaml

    from drsearch.search.shipping import certificate

    folder = out.with_suffix("")
    if out.suffix.lower() not in (".yaml", ".yml"):
        raise ConfigError(
            f"-o {out}: an ensemble file ends in .yaml (its members go in the folder of the "
            "same name without it), e.g. recipes/NAME.yaml"
        )
    if folder.exists() and not folder.is_dir():
        raise ConfigError(
            f"-o {out}: its members' folder {folder} is a file; choose another name or move it"
        )
    for trial in trials:  # every member's files are there before any is written
        run_dir = Path(str(trial.user_attrs.get("run_dir", "")))
        what = (f"confirmation run {trial.number} ({certified.label(trial)})" if certified
                else f"trial {trial.number}")  # fmt: skip
        for needed in ("config.yaml", "run.json", "checkpoints/best.pt"):
            if not (run_dir / needed).is_file():
                raise ConfigError(
                    f"{what}: its run folder {run_dir} has no {needed}; nothing was exported"
                )
    folder.mkdir(parents=True, exist_ok=True)
    written, members = [], []
    study_name, source = None, loaded.config.name
    if certified is not None:
        from drsearch.search.selection import confirm_name

        source = study_name = confirm_name(loaded.config.name)
    for trial in trials:
        name = f"trial{trial.number}" if certified is None else certified.member_name(trial)
        recipe_file = folder / f"{name}.yaml"
        weights_file = recipe_file.with_suffix(".pt")
        evaluation = None if certified else attrs.get(f"evaluation:trial{trial.number}")
        write_pinned(pinned_recipe(loaded, trial, evaluation, study_name), recipe_file)
        export_weights(trial, source, recipe_file, weights_file)
        members.append(
            {
                "recipe": str(recipe_file.relative_to(out.parent)),
                "weights": str(weights_file.relative_to(out.parent)),
            }
        )
        written.append(recipe_file)
    if certified is None:
        tag = evaluation_tag([t.number for t in trials], len(views) > 1)
    else:
        tag = certified.tag + ("-tta" if len(views) > 1 else "")
    body: dict[str, Any] = {"members": members, "views": views}
    if attrs.get(f"evaluation:{tag}") is not None:
        body["evaluation"] = attrs[f"evaluation:{tag}"]
    if certified is not None:
        body["certificate"] = certificate(certified) | ({"smoke": True} if loaded.smoke else {})
        units = f"{len(trials)} {certified.mode[:-1]} models"
        smoke = (
            "# A SMOKE RUN's result (drsearch run --smoke): a wiring check, not a model to use.\n"
            if loaded.smoke
            else ""
        )
        header = smoke + (
            f"# Certified result of study {loaded.config.name}: finalist {certified.finalist}'s "
            f"{units} (drsearch export).\n# Its certificate is what the finalist stage measured "
            f"on them; evaluate with: drsearch evaluate {shlex.quote(str(out))}\n"
        )
    else:
        numbers = ", ".join(str(t.number) for t in trials)
        header = (
            f"# Ensemble of study {loaded.config.name}, trials {numbers} (drsearch export "
            f"--top-k).\n# Evaluate with: drsearch evaluate {out}\n"
        )
    write_text_atomic(out, header + yaml.safe_dump({"ensemble": body}, sort_keys=False))
    return written
