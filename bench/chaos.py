"""Chaos: kill -9 runners at random moments, continue, and check the study's invariants.

    python bench/chaos.py [--kills 24] [--seed 0] [--postgres URL]

Each round makes a fresh tiny study (synthetic images, resnet10t at 32 px, 3 epochs, a budget
of 5 trials) in one of the combinations of executor (local, ray), ASHA mode (stopping,
promotion), runners (1 or 3 started together) and storage (SQLite; PostgreSQL with
``--postgres`` or ``DRSEARCH_TEST_POSTGRES``), taken in turn. It starts the runners, waits a
random 2-25 s, kills one of them with SIGKILL (its whole process group: the driver and its
Ray or training processes), lets the others go on, then continues the study with one more
runner until the budget is spent. It then checks:

- the budget is exact: counted trials (complete, pruned, failed for a reason of their own)
  equal ``n_trials``;
- nothing is RUNNING;
- no finished trial is lost: every trial finished before the continuation is finished after
  it with the same state and value;
- no configuration ran twice: counted trials have distinct parameters.

Prints one line per round and the number of broken invariants; exits 1 if any.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import optuna
import yaml

from drsearch.data.synth import write_synthetic_dataset

ENV = dict(os.environ, NO_ALBUMENTATIONS_UPDATE="1", RAY_AUTH_MODE="disabled")
BUDGET = 5


def write_study(
    folder: Path, data: Path, name: str, executor: str, mode: str, storage: str | None
) -> Path:
    recipe = {
        "data": {"kind": "aptos2019", "root": str(data), "image_size": 32, "val_fraction": 0.25},
        "model": {"name": "resnet10t"},
        "schedule": {"name": "cosine", "warmup_epochs": 1},
        "train": {"epochs": 3, "batch_size": 16, "threads": 1},
    }
    folder.mkdir(parents=True)
    (folder / "recipe.yaml").write_text(yaml.safe_dump(recipe))
    (folder / "space.yaml").write_text(
        "optim.lr: {type: float, low: 1.0e-4, high: 1.0e-2, log: true}\n"
    )
    body = {
        "name": name,
        "recipe": str(folder / "recipe.yaml"),
        "search_space": str(folder / "space.yaml"),
        "objective": {"metric": "accuracy", "constraints": []},
        "pruner": {"grace_period": 1, "reduction_factor": 2, "mode": mode},
        "sampler": {"name": "random"},
        "budget": {"n_trials": BUDGET},
        "resources": {"cpus_per_trial": 1, "max_concurrent": 2},
        "executor": executor,
        "run_root": str(folder / "runs"),
    }
    if storage:
        body["storage"] = storage
    path = folder / "study.yaml"
    path.write_text(yaml.safe_dump(body))
    return path


def runner(path: Path, log: Path) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "drsearch.cli", "run", str(path), "--quiet"],
        stdout=log.open("w"),
        stderr=subprocess.STDOUT,
        env=ENV,
        start_new_session=True,  # its own process group: killed as a whole
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )


def snapshot(storage: str, name: str) -> list[optuna.trial.FrozenTrial]:
    return optuna.load_study(study_name=name, storage=storage).get_trials()


def check(before: list, after: list) -> list[str]:
    broken = []
    counted = [
        t
        for t in after
        if t.state.name in ("COMPLETE", "PRUNED")
        or (t.state.name == "FAIL" and t.user_attrs.get("fail_reason") != "interrupted"
            and not any(u.user_attrs.get("retry_of") == t.number for u in after))
    ]  # fmt: skip
    if len(counted) != BUDGET:
        broken.append(f"budget: {len(counted)} counted, not {BUDGET}")
    running = [t.number for t in after if t.state.name == "RUNNING"]
    if running:
        broken.append(f"still RUNNING: {running}")
    by_number = {t.number: t for t in after}
    for t in before:
        if t.state.is_finished():
            now = by_number[t.number]
            if (now.state, now.value) != (t.state, t.value):
                broken.append(f"trial {t.number} changed: {t.state.name} -> {now.state.name}")
    params = [json.dumps(t.params, sort_keys=True) for t in counted]
    if len(set(params)) != len(params):
        broken.append("a configuration ran twice")
    return broken


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--kills", type=int, default=24)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--postgres", default=os.environ.get("DRSEARCH_TEST_POSTGRES"))
    args = ap.parse_args()
    rng = random.Random(args.seed)
    work = Path(tempfile.mkdtemp(prefix="drsearch-chaos-"))
    data = write_synthetic_dataset(work / "data", n=60, size=40, seed=1, imbalance="balanced")
    combos = [
        (executor, mode, n, storage)
        for storage in (["sqlite", "postgres"] if args.postgres else ["sqlite"])
        for n in (1, 3)
        for mode in ("stopping", "promotion")
        for executor in ("local", "ray")
    ]
    total_broken = 0
    started = time.time()
    for i in range(args.kills):
        executor, mode, n, kind = combos[i % len(combos)]
        name = f"chaos{i}"
        folder = work / name
        url = args.postgres if kind == "postgres" else None
        path = write_study(folder, data, name, executor, mode, url)
        storage = url or f"sqlite:///{folder / 'runs' / f'{name}.db'}"
        procs = [runner(path, folder / f"runner{j}.log") for j in range(n)]
        wait = rng.uniform(2.0, 25.0)
        time.sleep(wait)
        victim = rng.randrange(n)
        killed = procs[victim].poll() is None
        if killed:
            os.killpg(procs[victim].pid, signal.SIGKILL)
        for p in procs:
            p.wait(timeout=900)
        time.sleep(1.0)  # Ray's own processes follow their driver
        try:
            before = snapshot(storage, name)
        except Exception:  # noqa: BLE001 - killed before its database or study was created
            before = []
        again = subprocess.run(
            [sys.executable, "-m", "drsearch.cli", "run", str(path), "--quiet"],
            capture_output=True, text=True, env=ENV, timeout=1800,
        )  # fmt: skip
        after = snapshot(storage, name)
        broken = check(before, after)
        if again.returncode != 0:
            broken.append(f"the continuation exited {again.returncode}: {again.stderr[-300:]}")
        total_broken += len(broken)
        states = {s: sum(t.state.name == s for t in after) for s in ("COMPLETE", "PRUNED", "FAIL")}
        print(
            f"{i:2d} {executor:5s} {mode:9s} runners={n} {kind:8s} kill at {wait:4.1f}s "
            f"({'killed' if killed else 'had ended'}) -> {states} "
            f"{'OK' if not broken else 'BROKEN: ' + '; '.join(broken)}",
            flush=True,
        )
    print(
        f"{args.kills} rounds, {total_broken} broken invariants, {time.time() - started:.0f}s; "
        f"folders in {work}"
    )
    sys.exit(1 if total_broken else 0)


if __name__ == "__main__":
    main()
