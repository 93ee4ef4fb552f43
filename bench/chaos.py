"""Chaos: kill -9 runners at the worst moments, continue, and check the study's invariants.

    python bench/chaos.py [--kills 32] [--seed 0] [--postgres URL] [--only search|finalists]
                          [--runners 1|2] [--zombie-share 0.5] [--first N] [--race]

Each round makes a fresh tiny study (synthetic images, resnet10t at 32 px, 3 epochs, a budget
of 4 trials, a finalist stage of the top 2 on 2 seeds) in one of the combinations of
executor (local, Ray), runners (1, or 2 started together), the stage the kill lands in (the
search, or the finalist stage: once a confirmation run is RUNNING), tracking (none, or MLflow
in a SQLite store beside the study) and storage (SQLite; PostgreSQL with ``--postgres`` or
``DRSEARCH_TEST_POSTGRES``), ASHA mode alternating (stopping, promotion), taken in turn. One
runner is killed with SIGKILL (its whole process group); with two runners, in half of the
rounds the killed one is left a zombie (not reaped) until its neighbour has finished, as a
runner killed under a parent that has not yet called wait() is. With tracking, every other
round kills inside an MLflow client call instead (``DRSEARCH_FAULT=tracking:N``: the Nth
call of the runner). Then one more runner continues the study until its budget and its
finalist stage are done, and the script checks:

- the budget is exact: counted trials (complete, pruned, failed for a reason of their own)
  equal ``n_trials``;
- nothing is RUNNING (search or confirmation);
- no finished trial is lost: every trial finished before the continuation is finished after
  it with the same state and value;
- no configuration ran twice: counted trials have distinct parameters;
- no unplanned confirmation trial: every confirmation run belongs to a finalist (its
  ``confirm_of``, seed and epoch), each planned run is complete exactly once, and the stage
  crowned or declined on all of them (nothing pending);
- with tracking: every trial of both studies has exactly one MLflow run, whose state tag
  (``drsearch.state``) is its Optuna state.

Prints one line per round and the number of broken invariants; exits 1 if any.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import optuna
import yaml

from drsearch.data.synth import write_synthetic_dataset

ENV = dict(os.environ, NO_ALBUMENTATIONS_UPDATE="1", RAY_AUTH_MODE="disabled")
BUDGET = 4
FINALISTS = {"top_k": 2, "seeds": 2}


def write_study(
    folder: Path,
    data: Path,
    name: str,
    executor: str,
    mode: str,
    storage: str | None,
    tracking: bool,
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
    body: dict[str, Any] = {
        "name": name,
        "recipe": str(folder / "recipe.yaml"),
        "search_space": str(folder / "space.yaml"),
        "objective": {"metric": "accuracy", "constraints": []},
        "pruner": {"grace_period": 1, "reduction_factor": 2, "mode": mode},
        "sampler": {"name": "random"},
        "budget": {"n_trials": BUDGET},
        "finalists": FINALISTS,
        "resources": {"cpus_per_trial": 1, "max_concurrent": 2},
        "executor": executor,
        "run_root": str(folder / "runs"),
    }
    if storage:
        body["storage"] = storage
    if tracking:
        body["tracking"] = {"mlflow": {}}
    path = folder / "study.yaml"
    path.write_text(yaml.safe_dump(body))
    return path


def runner(path: Path, log: Path, env: dict[str, str]) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "drsearch.cli", "run", str(path), "--quiet"],
        stdout=log.open("w"),
        stderr=subprocess.STDOUT,
        env=env,
        start_new_session=True,  # its own process group: killed as a whole
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )


def states(storage: str, name: str, db: Path | None) -> list[str]:
    """The states of a study's trials, read without creating anything (a runner may still be
    creating the database: an Optuna storage opened now would create the schema beside it)."""
    query = (
        "SELECT t.state FROM trials t JOIN studies s ON s.study_id = t.study_id "
        "WHERE s.study_name = :name"
    )
    try:
        if db is not None:
            if not db.is_file():
                return []
            with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as conn:
                rows = conn.execute(query.replace(":name", "?"), (name,)).fetchall()
        else:
            from sqlalchemy import create_engine, text

            engine = create_engine(storage)
            with engine.connect() as conn:
                rows = conn.execute(text(query), {"name": name}).fetchall()
            engine.dispose()
        return [str(r[0]) for r in rows]
    except Exception:  # noqa: BLE001 - not created yet
        return []


def snapshot(storage: str, name: str) -> list[optuna.trial.FrozenTrial]:
    try:
        return optuna.load_study(study_name=name, storage=storage).get_trials()
    except KeyError:  # the study was never created
        return []


def wait_for_stage(storage: str, name: str, db: Path | None, procs: list, limit: float) -> bool:
    """Wait until a confirmation run is RUNNING; False if the runners ended first."""
    deadline = time.time() + limit
    while time.time() < deadline and any(p.poll() is None for p in procs):
        if "RUNNING" in states(storage, f"{name}-confirm", db):
            return True
        time.sleep(0.2)
    return False


def check(before: list, after: list, runs: list, record: dict | None = None) -> list[str]:
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
    running += [f"confirm {t.number}" for t in runs if t.state.name == "RUNNING"]
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
    return broken + check_stage(after, runs, record)


def check_stage(search: list, runs: list, record: dict | None = None) -> list[str]:
    """Every confirmation run belongs to the plan (a finalist, its seed and epoch), each
    planned run is complete exactly once, and nothing is left pending. A race (``--race``):
    every run belongs to a candidate, no seed of a candidate twice, the runs within the cap,
    the race over with as many runs spent as are complete, nothing pending."""
    complete = [t for t in search if t.state.name == "COMPLETE" and t.value is not None]
    # the plan: the top-k complete trials by value (feasible or not), by drsearch's own rule
    from drsearch.ranking import by_value, ranked_trials

    k = FINALISTS.get("candidates", FINALISTS["top_k"])
    chosen = [r.number for r in by_value(ranked_trials(complete))[:k]]
    if FINALISTS.get("race"):
        return _check_race(chosen, runs, record)
    broken = []
    stray = [t.number for t in runs if "confirm_of" not in t.user_attrs]
    if stray:
        broken.append(f"unplanned confirmation trials (sampled): {stray}")
    unknown = [t.number for t in runs if t.user_attrs.get("confirm_of") not in (*chosen, None)]
    if unknown:
        broken.append(f"confirmation runs of trials that are no finalist: {unknown}")
    for number in chosen:
        mine = [t for t in runs if t.user_attrs.get("confirm_of") == number]
        done = [t.user_attrs.get("seed") for t in mine if t.state.name == "COMPLETE"]
        if len(done) != FINALISTS["seeds"] or len(set(done)) != len(done):
            broken.append(f"finalist {number}: complete runs of seeds {sorted(done)}")
    return broken


def _check_race(chosen: list[int], runs: list, record: dict | None) -> list[str]:
    broken = []
    if any("confirm_of" not in t.user_attrs or t.user_attrs["confirm_of"] not in chosen
           for t in runs):  # fmt: skip
        broken.append("confirmation runs outside the race's candidates (or sampled)")
    done = [t for t in runs if t.state.name == "COMPLETE"]
    keys = [(t.user_attrs.get("confirm_of"), t.user_attrs.get("seed")) for t in done]
    if len(set(keys)) != len(keys):
        broken.append("a candidate's seed ran twice")
    cap = FINALISTS["top_k"] * FINALISTS["seeds"]
    if len(done) > cap:
        broken.append(f"{len(done)} complete runs over the cap of {cap}")
    if record is None or "race" not in record:
        return broken + ["no race in the stage's record"]
    if not record["race"]["done"] or record["pending"]:
        broken.append(f"the race is not over: pending {record['pending']}")
    if record["race"]["spent"] != len(done):
        broken.append(f"the record spent {record['race']['spent']} runs, {len(done)} complete")
    return broken


def check_tracking(folder: Path, storage: str, name: str, search: list, runs: list) -> list[str]:
    """Every trial of both studies has one MLflow run whose state tag is its Optuna state
    (a paused trial's: PAUSED)."""
    from mlflow.tracking import MlflowClient

    from drsearch.states import paused_at

    client = MlflowClient(f"sqlite:///{folder / 'runs' / f'{name}-mlflow.db'}")
    found = client.search_runs(
        [e.experiment_id for e in client.search_experiments()],
        "tags.`drsearch.kind` = 'trial'",
        max_results=50_000,
    )
    broken = []
    for study, trials in ((name, search), (f"{name}-confirm", runs)):
        if not trials:
            continue
        loaded = optuna.load_study(study_name=study, storage=storage)
        uid = str(loaded._storage.get_study_system_attrs(loaded._study_id)["drsearch:uuid"])
        by_trial: dict[int, list] = {}
        for r in found:
            if r.data.tags.get("drsearch.study") == uid:
                by_trial.setdefault(int(r.data.tags["drsearch.trial"]), []).append(r)
        for t in trials:
            if t.state.name == "WAITING":
                continue
            tracked = by_trial.get(t.number, [])
            if len(tracked) != 1:
                broken.append(f"{study} trial {t.number}: {len(tracked)} MLflow runs")
                continue
            want = "PAUSED" if paused_at(t) is not None else t.state.name
            state = tracked[0].data.tags.get("drsearch.state")
            if state != want:
                broken.append(f"{study} trial {t.number}: MLflow {state}, Optuna {want}")
    return broken


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--kills", type=int, default=32)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--postgres", default=os.environ.get("DRSEARCH_TEST_POSTGRES"))
    ap.add_argument("--only", choices=["search", "finalists"], help="one stage only")
    ap.add_argument("--first", type=int, default=0, help="start at this round of the cycle")
    ap.add_argument("--runners", type=int, choices=[1, 2], help="only rounds with this many")
    ap.add_argument(
        "--zombie-share", type=float, default=0.5,
        help="of the two-runner rounds with a kill, the share whose victim is left a zombie",
    )  # fmt: skip
    ap.add_argument(
        "--race", action="store_true",
        help="race the finalists (finalists: {race: true}, 3 candidates, cap 2 x 2 seeds)",
    )  # fmt: skip
    args = ap.parse_args()
    if args.race:
        FINALISTS.update(race=True, candidates=3)
    rng = random.Random(args.seed)
    work = Path(tempfile.mkdtemp(prefix="drsearch-chaos-"))
    data = write_synthetic_dataset(work / "data", n=60, size=40, seed=1, imbalance="balanced")
    combos = [
        (executor, n, stage, tracking, storage)
        for storage in (["sqlite", "postgres"] if args.postgres else ["sqlite"])
        for tracking in (False, True)
        for stage in ([args.only] if args.only else ["search", "finalists"])
        for n in ([args.runners] if args.runners else [1, 2])
        for executor in ("local", "ray")
    ]
    total_broken = 0
    started = time.time()
    for i in range(args.first, args.first + args.kills):
        executor, n, stage, tracking, kind = combos[i % len(combos)]
        mode = ("stopping", "promotion")[i % 2]
        name = f"chaos{i}"
        folder = work / name
        url = None
        if kind == "postgres":  # a schema of its own: every round starts empty
            url = fresh_schema(args.postgres, name)
        path = write_study(folder, data, name, executor, mode, url, tracking)
        storage = url or f"sqlite:///{folder / 'runs' / f'{name}.db'}"
        db = None if url else folder / "runs" / f"{name}.db"
        in_client = tracking and (i // len(combos)) % 2 == 0 and stage == "search"
        env = dict(ENV)
        victim = rng.randrange(n)
        procs = []
        for j in range(n):
            mine = dict(env)
            if in_client and j == victim:  # killed inside its Nth MLflow call
                mine["DRSEARCH_FAULT"] = f"tracking:{rng.randrange(3, 40)}"
            procs.append(runner(path, folder / f"runner{j}.log", mine))
        if in_client:
            how = "inside an MLflow call"
            killed = None
        elif stage == "finalists":
            reached = wait_for_stage(storage, name, db, procs, 900)
            time.sleep(rng.uniform(0.0, 3.0))
            how = "in the finalist stage" if reached else "(the stage ended first)"
            killed = procs[victim].poll() is None
        else:
            wait = rng.uniform(2.0, 25.0)
            time.sleep(wait)
            how = f"at {wait:4.1f}s"
            killed = procs[victim].poll() is None
        zombie = n > 1 and bool(killed) and rng.random() < args.zombie_share
        if killed:
            os.killpg(procs[victim].pid, signal.SIGKILL)
            if not zombie:
                procs[victim].wait(timeout=900)
        for j, p in enumerate(procs):
            if j != victim:
                p.wait(timeout=1800)
        procs[victim].wait(timeout=900)  # a zombie is reaped only now: its neighbour ran beside it
        if in_client:  # it killed itself and stayed a zombie while its neighbour ran
            killed = procs[victim].returncode == -signal.SIGKILL
            zombie = n > 1 and killed
        time.sleep(1.0)  # Ray's own processes follow their driver
        before = snapshot(storage, name)
        again = subprocess.run(
            [sys.executable, "-m", "drsearch.cli", "run", str(path), "--quiet"],
            capture_output=True, text=True, env=ENV, timeout=1800,
        )  # fmt: skip
        after = snapshot(storage, name)
        runs = snapshot(storage, f"{name}-confirm")
        record = optuna.load_study(study_name=name, storage=storage).user_attrs.get(
            "drsearch:finalists"
        )
        broken = check(before, after, runs, record)
        if tracking:
            broken += check_tracking(folder, storage, name, after, runs)
        if again.returncode != 0:
            broken.append(f"the continuation exited {again.returncode}: {again.stderr[-300:]}")
        total_broken += len(broken)
        tally = {s: sum(t.state.name == s for t in after) for s in ("COMPLETE", "PRUNED", "FAIL")}
        print(
            f"{i:2d} {executor:5s} {mode:9s} runners={n} {stage:9s} "
            f"{'mlflow' if tracking else 'untracked':9s} {kind:8s} kill {how} "
            f"({'killed' + (', a zombie' if zombie else '') if killed else 'had ended'}) -> "
            f"{tally}, {len(runs)} confirmation runs "
            f"{'OK' if not broken else 'BROKEN: ' + '; '.join(broken)}",
            flush=True,
        )
    print(
        f"{args.kills} rounds, {total_broken} broken invariants, {time.time() - started:.0f}s; "
        f"folders in {work}"
    )
    sys.exit(1 if total_broken else 0)


def fresh_schema(base: str, name: str) -> str:
    """A new PostgreSQL schema for one round, and the URL that uses it."""
    from sqlalchemy import create_engine, text

    engine = create_engine(base)
    schema = f"{name}_{os.getpid()}"
    with engine.begin() as conn:
        conn.execute(text(f"DROP SCHEMA IF EXISTS {schema} CASCADE"))
        conn.execute(text(f"CREATE SCHEMA {schema}"))
    engine.dispose()
    sep = "&" if "?" in base else "?"
    return f"{base}{sep}options=-csearch_path%3D{schema}"


if __name__ == "__main__":
    main()
