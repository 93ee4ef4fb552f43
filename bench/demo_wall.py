"""`make demo` as a user runs it: wall time of `drsearch run studies/demo.yaml`, and where it goes.

    python bench/demo_wall.py [--keep DIR]

Runs the shipped demo study (Ray, 12 trials, 2 at a time) in a fresh run root, from the
repository root, exactly as ``make demo`` does but with ``--quiet`` and ``--run-root``, and
prints: the command's wall time (process start to exit, Ray start-up included), the study wall
time it printed, the summed wall and training time of its trials, the epochs spent (complete
and pruned), and the cores the machine has. ``--keep DIR`` leaves the run root there (to open
its report and dashboard). Prints figures; asserts nothing.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import optuna

REPO = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--keep", type=Path, help="Leave the run root in this folder.")
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="drsearch-demo-"))
    runs = (args.keep or tmp / "runs").resolve()
    if runs.exists():
        sys.exit(f"{runs} exists; give --keep a new folder")
    drsearch = Path(sys.executable).with_name("drsearch")
    env = dict(os.environ, NO_ALBUMENTATIONS_UPDATE="1", RAY_AUTH_MODE="disabled")
    command = [str(drsearch), "run", "studies/demo.yaml", "--quiet", "--run-root", str(runs)]
    started = time.perf_counter()
    done = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - started
    if done.returncode != 0:
        sys.exit(f"drsearch run failed ({done.returncode}):\n{done.stdout}\n{done.stderr}")
    printed = re.search(r"study wall time: ([\d.]+)s", done.stdout)
    study = optuna.load_study(study_name="demo", storage=f"sqlite:///{runs / 'demo.db'}")
    trials = [t for t in study.trials if t.state.is_finished()]
    states: dict[str, int] = {}
    for t in trials:
        states[t.state.name] = states.get(t.state.name, 0) + 1
    trial_wall = sum(float(t.user_attrs.get("wall_seconds") or 0) for t in trials)
    train = sum(float(t.user_attrs.get("train_seconds") or 0) for t in trials)
    feasible = [t for t in trials if t.state.name == "COMPLETE" and t.user_attrs.get("feasible")]
    epochs = sum(int(t.user_attrs.get("epochs_completed") or 0) for t in trials)
    rows = [
        ("cores", str(os.cpu_count())),
        ("`drsearch run studies/demo.yaml` wall", f"{wall:.1f} s ({wall / 60:.1f} min)"),
        ("study wall time it printed", f"{printed.group(1) if printed else '?'} s"),
        ("trials", ", ".join(f"{n} {s.lower()}" for s, n in sorted(states.items()))),
        ("epochs spent (of 12 x 8 = 96 without pruning)", str(epochs)),
        ("summed trial wall time", f"{trial_wall:.1f} s"),
        ("summed training time (epochs)", f"{train:.1f} s"),
        ("trial wall / study wall (2 at a time: <= 2)", f"{trial_wall / wall:.2f}"),
        ("feasible complete trials", str(len(feasible))),
        ("best feasible value", f"{max(t.value for t in feasible):.4f}" if feasible else "-"),
    ]
    width = max(len(k) for k, _ in rows)
    for key, value in rows:
        print(f"{key:<{width}}  {value}")
    if args.keep is None:
        shutil.rmtree(tmp, ignore_errors=True)
    else:
        print(f"run root kept: {runs}")


if __name__ == "__main__":
    main()
