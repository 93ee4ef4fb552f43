"""Search efficiency: ASHA+TPE against full-budget random search with the same trial budget.

    python bench/search_efficiency.py [--seeds 0 1 2 3 4] [--regret 3] [--asha-trials 24]
                                      [--methods asha_tpe random asha_tpe_accuracy ...]

Runs ``studies/demo.yaml`` (Ray, 12 trials, 2 at a time) per seed and method, each in a fresh
run root: as shipped (``asha_tpe``: TPE, ASHA on the objective), as full-budget random search
(``random``: random sampler, no pruning), ``asha_tpe_<metric>`` (ASHA on that validation
metric), ``asha_tpe_grace<N>`` (rungs from epoch N) or ``asha_tpe_promotion``
(promotion-based ASHA: trials pause at a rung and resume when they rank in its top). Prints
per run the best objective value, the epochs spent, the share of trials pruned; then per
method the median best and epochs, and the epochs each method needed (trials in completion
order, each trial's epochs counted when it ends) to first reach the median best of random
search, and the best each found within a third of random search's epochs (``--asha-trials``
gives the ASHA methods a larger trial budget than random search's 12). With ``--regret N``,
N pruned trials of the first ASHA run are retrained to the full budget (``drsearch train`` on
their run folder's recipe) and scored on the study's objective: would any of them have beaten
that run's best? Prints figures; asserts nothing. A seed takes
about 6 minutes on 2 cores.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import optuna
import yaml

REPO = Path(__file__).resolve().parents[1]
ENV = dict(os.environ, NO_ALBUMENTATIONS_UPDATE="1", RAY_AUTH_MODE="disabled")
DRSEARCH = str(Path(sys.executable).with_name("drsearch"))


def run(method: str, seed: int, folder: Path, n_trials: int | None = None) -> dict[str, Any]:
    study = yaml.safe_load((REPO / "studies" / "demo.yaml").read_text())
    study["sampler"]["seed"] = seed
    if n_trials and method != "random":
        study["budget"]["n_trials"] = n_trials
    if method == "random":
        study["sampler"] = {"name": "random", "seed": seed}
        study["pruner"] = {"enabled": False}
    elif method == "asha_tpe_promotion":
        study["pruner"]["mode"] = "promotion"
    elif method.startswith("asha_tpe_grace"):
        study["pruner"]["grace_period"] = int(method.removeprefix("asha_tpe_grace"))
    elif method.startswith("asha_tpe_"):
        study["pruner"]["metric"] = method.removeprefix("asha_tpe_")
    path = folder / f"demo-{method}-{seed}.yaml"
    path.write_text(yaml.safe_dump(study))
    runs = folder / f"runs-{method}-{seed}"
    started = time.perf_counter()
    command = [DRSEARCH, "run", str(path), "--quiet", "--run-root", str(runs)]
    done = subprocess.run(command, cwd=REPO, env=ENV, capture_output=True, text=True)
    wall = time.perf_counter() - started
    if done.returncode != 0:
        sys.exit(f"run failed:\n{done.stdout}\n{done.stderr}")
    storage = f"sqlite:///{runs / 'demo.db'}"
    trials = [t for t in optuna.load_study(study_name="demo", storage=storage).trials]
    trials.sort(key=lambda t: t.datetime_complete or t.datetime_start)
    curve, spent, best = [], 0, float("-inf")
    for t in trials:  # best value so far against epochs spent, as trials end
        spent += int(t.user_attrs.get("epochs_completed") or 0)
        if t.state.name == "COMPLETE" and t.value is not None:
            best = max(best, t.value)
        curve.append((spent, best))
    return {
        "method": method,
        "seed": seed,
        "best": best,
        "epochs": spent,
        "pruned": sum(t.state.name == "PRUNED" for t in trials) / len(trials),
        "promotions": sum(int(t.user_attrs.get("promotions") or 0) for t in trials),
        "feasible": sum(bool(t.user_attrs.get("feasible")) for t in trials if t.value),
        "wall_s": wall,
        "curve": curve,
        "trials": trials,
        "study": study,
    }


def best_within(curve: list[tuple[int, float]], epochs: float) -> float:
    """The best value found by trials that ended within ``epochs`` epochs spent."""
    return max((best for spent, best in curve if spent <= epochs), default=float("-inf"))


def epochs_to_reach(curve: list[tuple[int, float]], target: float) -> int | None:
    return next((spent for spent, best in curve if best >= target - 1e-12), None)


def regret(asha: dict[str, Any], n: int, folder: Path) -> list[dict[str, Any]]:
    """Retrain ``n`` pruned trials (the latest pruned first: TPE's most informed) to the
    full budget and score them on the study's objective."""
    from drsearch.clinical import objective_score
    from drsearch.config.objective import ObjectiveConfig

    objective = ObjectiveConfig.model_validate(asha["study"]["objective"])
    pruned = [t for t in asha["trials"] if t.state.name == "PRUNED"][-n:]
    out = []
    for t in pruned:
        run_dir = Path(t.user_attrs["run_dir"])
        target = folder / f"regret-{t.number}"
        command = [DRSEARCH, "train", str(run_dir / "config.yaml"), "--out", str(target)]
        done = subprocess.run(command, cwd=REPO, env=ENV, capture_output=True, text=True)
        if done.returncode != 0:
            sys.exit(f"retrain failed:\n{done.stdout}\n{done.stderr}")
        metrics = json.loads((target / "metrics.json").read_text())
        score = objective_score(
            objective.metric, [(c.metric, c.min) for c in objective.constraints], metrics
        )
        out.append(
            {"trial": t.number, "pruned_at": t.user_attrs.get("pruned_at_epoch"),
             "full_budget_value": score.value, "beats_best": score.value > asha["best"]}
        )  # fmt: skip
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    parser.add_argument("--regret", type=int, default=3)
    parser.add_argument("--methods", nargs="+", default=["asha_tpe", "random"])
    parser.add_argument(
        "--random-best", type=float, nargs="+",
        help="without 'random' in --methods: random search's best per seed from an earlier run",
    )  # fmt: skip
    parser.add_argument(
        "--asha-trials", type=int,
        help="trial budget of the ASHA methods (default: the demo's 12, as random search)",
    )  # fmt: skip
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        rows = []
        for seed in args.seeds:
            for method in args.methods:
                rows.append(run(method, seed, Path(tmp), args.asha_trials))
                r = rows[-1]
                print(
                    f"{method} seed {seed}: best {r['best']:.4f}, {r['epochs']} epochs, "
                    f"{r['pruned']:.0%} pruned, {r['promotions']} promotions, "
                    f"{r['feasible']} feasible, {r['wall_s']:.0f} s",
                    flush=True,
                )
        by_method = {m: [r for r in rows if r["method"] == m] for m in args.methods}
        asha = by_method.get("asha_tpe") or by_method[args.methods[0]]
        rand = by_method.get("random") or [
            {"best": b, "epochs": 96, "wall_s": 0.0, "pruned": 0.0} for b in args.random_best
        ]
        target = statistics.median(r["best"] for r in rand)
        print("\nmethod | median best | median epochs | median wall s | pruned")
        for name, group in by_method.items():
            print(
                f"{name} | {statistics.median(r['best'] for r in group):.4f} | "
                f"{statistics.median(r['epochs'] for r in group):.0f} | "
                f"{statistics.median(r['wall_s'] for r in group):.0f} | "
                f"{statistics.mean(r['pruned'] for r in group):.0%}"
            )
        rand_epochs = statistics.median(r["epochs"] for r in rand)
        print(f"\nrandom search's median best: {target:.4f} in {rand_epochs:.0f} epochs (median)")
        third = rand_epochs / 3
        for name, group in by_method.items():
            if "curve" in group[0]:
                within = [best_within(r["curve"], third) for r in group]
                print(
                    f"{name} best within {third:.0f} epochs (1/3 of random's), per seed: "
                    + ", ".join(f"{b:.4f}" for b in within)
                    + f"; median {statistics.median(within):.4f}"
                )
        for name, group in by_method.items():
            if name == "random":
                continue
            reach = [epochs_to_reach(r["curve"], target) for r in group]
            print(f"{name} epochs to reach it, per seed: " + ", ".join(map(str, reach)))
            if sum(x is not None for x in reach) > len(reach) / 2:
                ratio = statistics.median(x if x is not None else float("inf") for x in reach)
                print(f"  median: {ratio:.0f} epochs = {ratio / rand_epochs:.2f}x random's epochs")
            else:
                print("  median: not reached on most seeds (goal: <= 1/3 of random's epochs)")
        if args.regret:
            print("\nregret: pruned trials of ASHA+TPE seed", asha[0]["seed"], "at full budget")
            for row in regret(asha[0], args.regret, Path(tmp)):
                print(row)


if __name__ == "__main__":
    main()
