"""Study wall time against the summed training time of its trials, per executor.

    python bench/study_overhead.py [--trials 8] [--epochs 2]

Runs the same small study (synthetic data, resnet10t at 32 px, no pruning, one trial at a
time) with the local and the Ray executor and prints, for each: the study's wall time, the
summed wall time of its trials (as each trial measured it: data caching, model set-up and
training), and the difference per trial, over all trials and after the first (a warm worker
and an open study: what each further trial costs). Ray's start-up is shown separately. The
floor is a plain Optuna loop (``study.optimize``, in-memory storage) calling the same trainer
(``fit``) with the same parameters: its wall against its summed ``fit`` time. Prints figures;
asserts nothing.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import yaml

from drsearch.config.study import load_study
from drsearch.data.synth import write_synthetic_dataset
from drsearch.search.runners import run_study


def write_study(folder: Path, data: Path, executor: str, trials: int, epochs: int) -> Path:
    recipe = {
        "data": {"kind": "aptos2019", "root": str(data), "image_size": 32},
        "model": {"name": "resnet10t"},
        "schedule": {"name": "cosine"},
        "train": {"epochs": epochs, "batch_size": 16},
    }
    (folder / "recipe.yaml").write_text(yaml.safe_dump(recipe))
    (folder / "space.yaml").write_text(
        "optim.lr: {type: float, low: 1.0e-4, high: 1.0e-2, log: true}\n"
    )
    study = {
        "name": f"overhead-{executor}",
        "recipe": str(folder / "recipe.yaml"),
        "search_space": str(folder / "space.yaml"),
        "pruner": {"enabled": False},
        "budget": {"n_trials": trials},
        "executor": executor,
        "resources": {"cpus_per_trial": 2, "max_concurrent": 1},
        "run_root": str(folder / "runs"),
    }
    path = folder / f"{executor}.yaml"
    path.write_text(yaml.safe_dump(study))
    return path


def plain_optuna(folder: Path, data: Path, trials: int, epochs: int) -> tuple[float, float]:
    """Wall time of a bare ``study.optimize`` over ``fit`` and the summed ``fit`` time."""
    import optuna

    from drsearch.config.loading import load_recipe
    from drsearch.train import fit

    base = load_recipe(write_study(folder, data, "plain", trials, epochs).parent / "recipe.yaml")
    fit_seconds = 0.0

    def objective(trial: optuna.Trial) -> float:
        nonlocal fit_seconds
        lr = trial.suggest_float("optim.lr", 1e-4, 1e-2, log=True)
        recipe = base.model_copy(update={"optim": base.optim.model_copy(update={"lr": lr})})
        t0 = time.perf_counter()
        result = fit(recipe, run_dir=folder / "runs" / f"{trial.number:04d}")
        fit_seconds += time.perf_counter() - t0
        return float(result.best["accuracy"] or 0.0)

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(direction="maximize", sampler=optuna.samplers.TPESampler(seed=0))
    t0 = time.perf_counter()
    study.optimize(objective, n_trials=trials)
    return time.perf_counter() - t0, fit_seconds


def steady_state(config) -> tuple[float, float]:  # type: ignore[no-untyped-def]
    """Per-trial overhead once the first trial has ended (a warm worker, an open study): the
    time from the first trial's end to the last one's, minus the later trials' own time, per
    trial; and the later trials' mean own time."""
    import optuna

    study = optuna.load_study(study_name=config.name, storage=config.storage_url())
    trials = sorted(study.trials, key=lambda t: t.datetime_complete)
    later = trials[1:]
    span = (trials[-1].datetime_complete - trials[0].datetime_complete).total_seconds()
    own = sum(float(t.user_attrs["wall_seconds"]) for t in later)
    return (span - own) / len(later), own / len(later)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=8)
    parser.add_argument("--epochs", type=int, default=2)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        data = write_synthetic_dataset(root / "data", n=240, size=64, seed=0)
        (root / "plain").mkdir()
        wall, own = plain_optuna(root / "plain", data, args.trials, args.epochs)
        print(
            f"plain optuna loop (the floor): {args.trials} trials, wall {wall:6.1f}s, fit() time "
            f"{own:6.1f}s, ratio {wall / own:.3f}"
        )
        for executor in ("local", "ray"):
            folder = root / executor
            folder.mkdir()
            loaded = load_study(write_study(folder, data, executor, args.trials, args.epochs))
            ray_start = 0.0
            if executor == "ray":
                from drsearch.search.runners.ray import ray_session

                t0 = time.perf_counter()
                with ray_session(None):
                    ray_start = time.perf_counter() - t0
                    summary = run_study(loaded)
            else:
                summary = run_study(loaded)
            wall, own = summary.wall_seconds, summary.trial_seconds
            n = summary.started_trials
            print(
                f"{executor:>5}: {n} trials, study wall {wall:6.1f}s, trials' own time "
                f"{own:6.1f}s, overhead {wall - own:5.1f}s = {(wall - own) / n:.2f}s/trial, "
                f"ratio {wall / own:.3f} ({own / wall:.1%} of wall is training)"
                + (f"; ray.init {ray_start:.1f}s before that" if ray_start else "")
            )
            gap, later = steady_state(loaded.config)
            print(
                f"       after the first trial (start-up excluded): {gap:.2f}s/trial, "
                f"ratio {(later + gap) / later:.3f} per trial"
            )


if __name__ == "__main__":
    main()
