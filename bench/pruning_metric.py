"""The demo study pruned on validation accuracy against pruned on the constrained objective.

    python bench/pruning_metric.py [--seeds 0]

Runs ``studies/demo.yaml`` (Ray, 12 trials, 2 at a time) once per pruning metric and sampler
seed, each in a fresh run root, and prints per run: trials complete / pruned, epochs spent,
feasible complete trials, the best feasible value and its trial. Prints figures; asserts
nothing. Each run takes about 3 minutes on 2 cores.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import optuna
import yaml

REPO = Path(__file__).resolve().parents[1]


def run(metric: str, seed: int, folder: Path) -> dict[str, object]:
    study = yaml.safe_load((REPO / "studies" / "demo.yaml").read_text())
    study["pruner"]["metric"] = metric
    study["sampler"]["seed"] = seed
    path = folder / f"demo-{metric}-{seed}.yaml"
    path.write_text(yaml.safe_dump(study))
    runs = folder / f"runs-{metric}-{seed}"
    env = dict(os.environ, NO_ALBUMENTATIONS_UPDATE="1", RAY_AUTH_MODE="disabled")
    drsearch = Path(sys.executable).with_name("drsearch")
    started = time.perf_counter()
    done = subprocess.run(
        [str(drsearch), "run", str(path), "--quiet", "--run-root", str(runs)],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
    )
    wall = time.perf_counter() - started
    if done.returncode != 0:
        sys.exit(f"run failed:\n{done.stdout}\n{done.stderr}")
    trials = optuna.load_study(study_name="demo", storage=f"sqlite:///{runs / 'demo.db'}").trials
    complete = [t for t in trials if t.state.name == "COMPLETE"]
    feasible = [t for t in complete if t.user_attrs.get("feasible")]
    best = max(feasible, key=lambda t: t.value or -1e9) if feasible else None
    return {
        "metric": metric,
        "seed": seed,
        "complete": len(complete),
        "pruned": sum(t.state.name == "PRUNED" for t in trials),
        "epochs": sum(int(t.user_attrs.get("epochs_completed") or 0) for t in trials),
        "feasible": len(feasible),
        "best": f"{best.value:.4f} (trial {best.number})" if best else "-",
        "wall_s": f"{wall:.0f}",
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        rows = [
            run(metric, seed, Path(tmp))
            for seed in args.seeds
            for metric in ("accuracy", "objective")
        ]
    keys = list(rows[0])
    print(" | ".join(keys))
    for row in rows:
        print(" | ".join(str(row[k]) for k in keys))


if __name__ == "__main__":
    main()
