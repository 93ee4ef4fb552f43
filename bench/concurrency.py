"""Concurrency scaling: trials per hour with 1 and 2 trials at a time on the same cores.

    python bench/concurrency.py [--trials 8] [--epochs 3]

The same small study (synthetic data, resnet10t at 48 px, no pruning) runs, each in a fresh
run root:

- Ray, ``max_concurrent: 1``, ``cpus_per_trial: 1`` (one torch thread per trial);
- Ray, ``max_concurrent: 1``, ``cpus_per_trial: 2`` (one trial using both cores);
- Ray, ``max_concurrent: 2``, ``cpus_per_trial: 1`` (two trials, one thread each);
- the local executor: one runner (all cores), then two runners (``train.threads: 1`` each)
  started together on one storage (the study's budget shared between them).

Prints trials per hour of each and the ratios against one trial at a time. Prints figures;
asserts nothing.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

from drsearch.data.synth import write_synthetic_dataset

ENV = dict(os.environ, NO_ALBUMENTATIONS_UPDATE="1", RAY_AUTH_MODE="disabled")
DRSEARCH = str(Path(sys.executable).with_name("drsearch"))


def write_study(folder: Path, data: Path, args: argparse.Namespace, **study: object) -> Path:
    threads = study.pop("threads", None)
    recipe = {
        "data": {"kind": "aptos2019", "root": str(data), "image_size": 48},
        "model": {"name": "resnet10t"},
        "schedule": {"name": "cosine"},
        "train": {"epochs": args.epochs, "batch_size": 16, "threads": threads},
    }
    folder.mkdir(parents=True)
    (folder / "recipe.yaml").write_text(yaml.safe_dump(recipe))
    (folder / "space.yaml").write_text(
        "optim.lr: {type: float, low: 1.0e-4, high: 1.0e-2, log: true}\n"
    )
    body = {
        "name": "scaling",
        "recipe": str(folder / "recipe.yaml"),
        "search_space": str(folder / "space.yaml"),
        "pruner": {"enabled": False},
        "budget": {"n_trials": args.trials},
        "run_root": str(folder / "runs"),
        **study,
    }
    path = folder / "study.yaml"
    path.write_text(yaml.safe_dump(body))
    return path


def timed(commands: list[list[str]]) -> float:
    """Wall time of ``commands`` started together, until the last one ends."""
    t0 = time.perf_counter()
    procs = [subprocess.Popen(c, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
             for c in commands]  # fmt: skip
    for p in procs:
        out, _ = p.communicate()
        if p.returncode != 0:
            sys.exit(out.decode())
    return time.perf_counter() - t0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=8)
    parser.add_argument("--epochs", type=int, default=3)
    args = parser.parse_args()
    setups = [
        ("ray, 1 at a time, 1 thread", "ray", 1, 1, 1),
        ("ray, 1 at a time, 2 threads", "ray", 1, 2, 1),
        ("ray, 2 at a time, 1 thread each", "ray", 2, 1, 1),
        ("local, 1 runner, 2 threads", "local", 1, None, 1),
        ("local, 2 runners, 1 thread each", "local", 1, 1, 2),
    ]
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        data = write_synthetic_dataset(root / "data", n=320, size=64, seed=0)
        rows = []
        for n, (label, executor, concurrent, cpus, runners) in enumerate(setups):
            study = {
                "executor": executor,
                "resources": {"cpus_per_trial": cpus or 2, "max_concurrent": concurrent},
            }
            if executor == "local":
                study["threads"] = cpus
            path = write_study(root / f"s{n}", data, args, **study)
            command = [DRSEARCH, "run", str(path), "--quiet"]
            wall = timed([command] * runners)
            rows.append((label, wall, args.trials / wall * 3600))
            print(f"{label}: {wall:.1f} s, {rows[-1][2]:.0f} trials/hour", flush=True)
    base = {"ray": rows[0][2], "ray2": rows[1][2], "local": rows[3][2]}
    print("\nsetup | wall s | trials/hour | vs 1 at a time")
    for label, wall, rate in rows:
        ref = base["local"] if label.startswith("local") else base["ray"]
        print(f"{label} | {wall:.1f} | {rate:.0f} | {rate / ref:.2f}x")
    print(
        f"\n2 trials at a time (1 thread each) vs 1 trial with both cores: "
        f"{rows[2][2] / base['ray2']:.2f}x (Ray); {rows[4][2] / base['local']:.2f}x (local)"
    )


if __name__ == "__main__":
    main()
