"""Search efficiency on YAHPO Gym's LCBench surrogate: drsearch's search against its peers.

    python bench/hpo_lcbench.py --quick            # 6 tasks x 3 seeds, W = 1 and 4 (minutes)
    python bench/hpo_lcbench.py --tasks all --seeds 10 --workers 1 4 --jobs 2

Every method gets the same budget of simulated time on each task: ``--full-runs`` (default 30)
times the median time a random configuration takes to train its 52 epochs there, divided by
the W workers. Each epoch costs the surrogate's own seconds (its ``time`` output). Methods:

- ``drsearch`` (its defaults: TPE fitted on the top rung, ``sampler.fit_on: top_rung``, as
  BOHB fits its model, under promotion ASHA grace 1, eta 2), ``drsearch-random`` (random
  sampler under the same ASHA: the default during issue 24 until the 10-seed run),
  ``drsearch-stopping`` (random sampler, stopping ASHA, eta 2), ``drsearch-promotion``
  (random, promotion ASHA, eta 3: the default between two changes of issue 24),
  ``drsearch-tpe`` (TPE on Optuna's view with constant liar, multivariate, under stopping
  ASHA eta 3: the default before issue 24) and ``random`` (drsearch's random sampler, no
  pruning: full-budget random search). All run through
  drsearch's real runner code on the simulated executor
  (``drsearch.search.runners.simulated``), the study in memory. ``drsearch-tpe-nopruning``
  (TPE, no ASHA), ``drsearch-tpe-top`` (the default spelled out: its name in the runs that
  chose it) and ``drsearch-bohb`` (the same with a third of the trials drawn at random, as
  BOHB does) on request; any drsearch method takes study keys, e.g.
  ``"drsearch[sampler.name=tpe,sampler.random_fraction=0.3]"``.
- ``optuna-hyperband`` and ``optuna-sha``: plain Optuna (TPE defaults, its HyperbandPruner or
  SuccessiveHalvingPruner), asked and told in the same simulated event loop.
- ``synetune-asha`` and ``synetune-bohb``: Syne Tune 0.16's ASHA (stopping; 0.16 has no
  promotion type) and BOHB schedulers in that loop.

The metric is validation balanced accuracy (higher is better). Figures, per task and seed:
the incumbent (best validation value any reported epoch has reached) at 10/25/50/100% of
the budget as normalized regret ``(best - incumbent) / (best - median)``, where ``best`` is
the highest value any method or a reference sample of 2000 random configurations reached on
the task and ``median`` the median random configuration's value after 52 epochs (a random
full run scores about 1); the average rank of the methods at each fraction; the simulated
time each method takes to reach the final incumbent of full-budget random search; and the
test regret of the configuration each method returns (drsearch: its study's best trial at its
best epoch; the others: the best validation epoch seen), the same normalization on test
balanced accuracy. Median and interquartile range over tasks and seeds; results in
``--out`` (JSON) and an HTML page of anytime regret curves with bands.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import math
import random
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from lcbench import EPOCHS, SPACE, LCBench, random_config, tasks  # noqa: E402

FRACTIONS = (0.1, 0.25, 0.5, 1.0)
METHODS = (
    "drsearch", "drsearch-random", "drsearch-stopping", "random", "drsearch-tpe",
    "optuna-hyperband", "optuna-sha", "synetune-asha", "synetune-bohb",
)  # fmt: skip
#: Run through drsearch's own runner code; ``drsearch-tpe`` is TPE on Optuna's view under
#: stopping ASHA (the default before issue 24), ``drsearch-tpe-nopruning`` TPE without ASHA.
DRSEARCH_METHODS = (
    "drsearch", "drsearch-random", "drsearch-stopping", "drsearch-promotion", "random",
    "drsearch-tpe", "drsearch-tpe-nopruning", "drsearch-tpe-top", "drsearch-bohb",
)  # fmt: skip
#: What the methods' names mean, in a log: a resumed run reuses only entries of the same
#: meaning (2: ``drsearch`` is TPE on the top rung; entries without it, random under ASHA).
NAMES = 2
QUICK_TASKS = ("3945", "7593", "34539", "126025", "167168", "189909")
METRIC = "val_balanced_accuracy"


# -- the surrogate as a trainable ---------------------------------------------------------------
class Curves:
    """Every configuration's 52-epoch curves, queried once (one ONNX batch) and kept."""

    def __init__(self, task: str) -> None:
        self.bench = LCBench(task)
        self.cache: dict[tuple[Any, ...], dict[str, np.ndarray]] = {}

    def of(self, config: dict[str, Any]) -> dict[str, np.ndarray]:
        key = tuple(config[k] for k in SPACE)
        if key not in self.cache:
            clean = {k: config[k] for k in SPACE}
            out = self.bench.curves([clean])
            curve = {name: values[0] for name, values in out.items()}
            # seconds of each epoch: the surrogate gives the time to reach each one
            steps = np.diff(np.concatenate([[0.0], np.maximum.accumulate(curve["time"])]))
            curve["epoch_seconds"] = np.maximum(steps, 1e-3)
            self.cache[key] = curve
        return self.cache[key]


class Trace:
    """What a method's run reported, in simulated-time order."""

    def __init__(self) -> None:
        self.times: list[float] = []
        self.values: list[float] = []
        self.test: list[float] = []

    def add(self, t: float, value: float, test: float) -> None:
        self.times.append(t)
        self.values.append(value)
        self.test.append(test)


# -- drsearch, through its own runner code -----------------------------------------------------
def split_method(method: str) -> tuple[str, dict[str, str]]:
    """``drsearch[sampler.random_fraction=0.5,pruner.grace_period=3]``: a drsearch method with
    study keys changed (to compare candidate defaults in one run)."""
    base, _, rest = method.partition("[")
    pairs = [p.split("=", 1) for p in rest.rstrip("]").split(",") if p]
    return base, {k.strip(): v.strip() for k, v in pairs}


def _drsearch_study(folder: Path, method: str, seed: int) -> Any:
    import yaml

    from drsearch.config.space import FloatParam, IntParam
    from drsearch.config.study import load_study

    (folder / "recipe.yaml").write_text(yaml.safe_dump({"train": {"epochs": EPOCHS}}))
    (folder / "space.yaml").write_text("optim.lr: {type: float, low: 1.0e-4, high: 1.0e-1}\n")
    method, overrides = split_method(method)
    pruner: dict[str, Any] = {"metric": "balanced_accuracy"}
    sampler: dict[str, Any] = {"seed": seed}  # drsearch's default sampler
    # every method but the default names its sampler: a later default does not change it
    if method == "drsearch-promotion":  # the default of the first change (eta 3)
        pruner |= {"mode": "promotion", "reduction_factor": 3}
    if method in ("drsearch-stopping", "drsearch-tpe", "drsearch-tpe-nopruning"):
        pruner["mode"] = "stopping"
    if method == "drsearch-tpe":  # the default before issue 24
        pruner["reduction_factor"] = 3
    if method in ("random", "drsearch-tpe-nopruning"):
        pruner["enabled"] = False
    if method in ("random", "drsearch-random", "drsearch-stopping", "drsearch-promotion"):
        sampler["name"] = "random"
    if method in ("drsearch-tpe", "drsearch-tpe-nopruning"):
        sampler |= {"name": "tpe", "fit_on": "outcomes"}
    if method in ("drsearch-bohb", "drsearch-tpe-top"):  # BOHB's model, the default pruner
        sampler |= {"name": "tpe", "fit_on": "top_rung"}
    if method == "drsearch-bohb":  # and BOHB's share of random trials
        sampler["random_fraction"] = 1 / 3
    study = {
        "name": f"lcbench-{method}", "recipe": str(folder / "recipe.yaml"),
        "search_space": str(folder / "space.yaml"),
        "objective": {"metric": "balanced_accuracy", "constraints": []},
        "pruner": pruner, "sampler": sampler, "budget": {"n_trials": 1_000_000},
        "executor": "local", "run_root": str(folder / "runs"),
    }  # fmt: skip
    for key, value in overrides.items():  # e.g. sampler.random_fraction=0.5
        section, name = key.split(".")
        study[section][name] = yaml.safe_load(value)
    (folder / "study.yaml").write_text(yaml.safe_dump(study))
    loaded = load_study(folder / "study.yaml")
    space = {}
    for name, (low, high, log, integer) in SPACE.items():
        kind = IntParam if integer else FloatParam
        space[name] = kind(type="int" if integer else "float", low=low, high=high, log=log)
    return dataclasses.replace(loaded, space=space)


def run_drsearch(
    method: str, curves: Curves, seed: int, workers: int, budget: float
) -> tuple[Trace, float | None]:
    """The trace, and the test value of the configuration the study returns."""
    from drsearch.search.runners.simulated import memory_store, run_simulated

    trace = Trace()
    with tempfile.TemporaryDirectory() as tmp:
        loaded = _drsearch_study(Path(tmp), method, seed)
        store = memory_store(loaded.config)

        def trainable(config: dict[str, Any], reporter: Callable[..., None], done: int) -> None:
            curve = curves.of(config)
            best, best_epoch = -math.inf, 0
            for epoch in range(1, EPOCHS + 1):
                value = float(curve[METRIC][epoch - 1])
                if value > best:
                    best, best_epoch = value, epoch
                reporter(epoch, {
                    "epoch": epoch, "val": {"balanced_accuracy": value},
                    "best_epoch": best_epoch, "lr": {}, "train": {"loss": 0.0},
                    "epoch_seconds": float(curve["epoch_seconds"][epoch - 1]),
                    "replayed": epoch <= done,
                })  # fmt: skip

        result = run_simulated(
            store, loaded, trainable, lambda params, label: (params, EPOCHS), workers, None,
            until=budget,
        )  # fmt: skip
        # the trace: every epoch decided, at its simulated time
        by_trial = {t.number: t for t in store.study.get_trials()}
        for e in result.events:
            if e.epoch and e.decision in ("continue", "stop", "prune", "pause"):
                curve = curves.of(by_trial[e.trial].params)
                trace.add(e.time, float(curve[METRIC][e.epoch - 1]),
                          float(curve["test_balanced_accuracy"][e.epoch - 1]))  # fmt: skip
        from drsearch.search.store import best_trial

        best = best_trial(store.study)
        returned = None
        if best is not None:
            curve = curves.of(best.params)
            returned = float(
                curve["test_balanced_accuracy"][int(best.user_attrs["best_epoch"]) - 1]
            )
    return trace, returned


# -- peers in one simulated event loop ---------------------------------------------------------
def event_loop(
    ask: Callable[[], tuple[Any, dict[str, Any]]],
    report: Callable[[Any, int, float], bool],
    end: Callable[[Any, int], None],
    curves: Curves,
    workers: int,
    budget: float,
) -> Trace:
    """W workers: each asks for a configuration, trains it epoch by epoch (the surrogate's
    seconds each) while ``report`` says go on, then ``end``; events in time order."""
    import heapq

    trace = Trace()
    heap: list[tuple[float, int, int, Any, dict[str, Any]]] = []
    for w in range(workers):
        handle, config = ask()
        heapq.heappush(heap, (float(curves.of(config)["epoch_seconds"][0]), w, 1, handle, config))
    while heap:
        t, w, epoch, handle, config = heapq.heappop(heap)
        if t > budget:
            continue  # this worker's time is up
        curve = curves.of(config)
        value = float(curve[METRIC][epoch - 1])
        trace.add(t, value, float(curve["test_balanced_accuracy"][epoch - 1]))
        go_on = report(handle, epoch, value) and epoch < EPOCHS
        if go_on:
            heapq.heappush(heap, (t + float(curve["epoch_seconds"][epoch]), w, epoch + 1,
                                  handle, config))  # fmt: skip
            continue
        end(handle, epoch)
        handle, config = ask()
        heapq.heappush(heap, (t + float(curves.of(config)["epoch_seconds"][0]), w, 1, handle,
                              config))  # fmt: skip
    return trace


def run_optuna(method: str, curves: Curves, seed: int, workers: int, budget: float) -> Trace:
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    pruner = (
        optuna.pruners.HyperbandPruner(min_resource=1, max_resource=EPOCHS)
        if method == "optuna-hyperband"
        else optuna.pruners.SuccessiveHalvingPruner(min_resource=1)
    )
    # Optuna's Hyperband assigns a trial's bracket by a hash of the study's name: a fixed name
    # (not a random one) keeps the run reproducible
    study = optuna.create_study(
        study_name=f"{method}-{seed}", direction="maximize",
        sampler=optuna.samplers.TPESampler(seed=seed), pruner=pruner,
    )  # fmt: skip

    def ask() -> tuple[Any, dict[str, Any]]:
        trial = study.ask()
        config = {}
        for name, (low, high, log, integer) in SPACE.items():
            if integer:
                config[name] = trial.suggest_int(name, low, high, log=log)
            else:
                config[name] = trial.suggest_float(name, low, high, log=log)
        return trial, config

    def report(trial: Any, epoch: int, value: float) -> bool:
        trial.report(value, epoch)
        return not trial.should_prune()

    def end(trial: Any, epoch: int) -> None:
        values = study._storage.get_trial(trial._trial_id).intermediate_values
        if epoch >= EPOCHS:
            study.tell(trial, max(values.values()))
        else:
            study.tell(trial, state=optuna.trial.TrialState.PRUNED)

    return event_loop(ask, report, end, curves, workers, budget)


def run_synetune(method: str, curves: Curves, seed: int, workers: int, budget: float) -> Trace:
    from syne_tune.backend.trial_status import Trial
    from syne_tune.config_space import lograndint, loguniform, randint, uniform
    from syne_tune.optimizer.baselines import ASHA, BOHB

    space: dict[str, Any] = {}
    for name, (low, high, log, integer) in SPACE.items():
        if integer:
            space[name] = lograndint(low, high) if log else randint(low, high)
        else:
            space[name] = loguniform(low, high) if log else uniform(low, high)
    kind = ASHA if method == "synetune-asha" else BOHB
    # Syne Tune 0.16's RandomSearcher (behind ASHA after its first draws, and BOHB's random
    # share) samples with numpy's global generator (``sample_random_config`` passes no
    # random_state), so ``random_seed`` alone does not make a run reproducible: seed it too
    np.random.seed(seed)
    random.seed(seed)
    scheduler = kind(space, metric=METRIC, time_attr="epoch", max_t=EPOCHS, do_minimize=False,
                     random_seed=seed, grace_period=1, reduction_factor=3)  # fmt: skip
    counter = iter(range(10**9))
    best: dict[int, float] = {}

    def ask() -> tuple[Any, dict[str, Any]]:
        suggestion = scheduler.suggest()
        trial = Trial(trial_id=next(counter), config=suggestion.config, creation_time=None)
        scheduler.on_trial_add(trial)
        return trial, suggestion.config

    def report(trial: Any, epoch: int, value: float) -> bool:
        best[trial.trial_id] = max(best.get(trial.trial_id, -math.inf), value)
        decision = scheduler.on_trial_result(trial, {"epoch": epoch, METRIC: value})
        return str(decision).lower().endswith("continue")

    def end(trial: Any, epoch: int) -> None:
        if epoch >= EPOCHS:
            scheduler.on_trial_complete(trial, {"epoch": epoch, METRIC: best[trial.trial_id]})

    return event_loop(ask, report, end, curves, workers, budget)


# -- one task, one seed ------------------------------------------------------------------------
@functools.cache
def task_reference(task: str) -> dict[str, float]:
    """``reference`` of a task, once per process (it depends on the task alone)."""
    return reference(Curves(task))


def reference(curves: Curves, n: int = 2000) -> dict[str, float]:
    """A random sample of the task: its best and median validation (and test) values and the
    median time of a full 52-epoch run."""
    rng = np.random.default_rng(12345)
    configs = [random_config(rng) for _ in range(n)]
    out = curves.bench.curves(configs)
    return {
        "best_val": float(out[METRIC].max()),
        "median_val": float(np.median(out[METRIC][:, -1])),
        "best_test": float(out["test_balanced_accuracy"].max()),
        "median_test": float(np.median(out["test_balanced_accuracy"][:, -1])),
        "full_seconds": float(np.median(np.maximum.accumulate(out["time"], axis=1)[:, -1])),
    }


def run_seed(task: str, seed: int) -> int:
    """The seed every method gets for (task, seed): different per task, so that one lucky
    seed (the same first configurations) is not the same luck on every task."""
    import zlib

    return zlib.crc32(f"{task}:{seed}".encode()) & 0x7FFFFFFF


def one(
    task: str, seed: int, workers: int, full_runs: float, methods: tuple[str, ...],
    ref: dict[str, float] | None = None,
) -> dict:  # fmt: skip
    """Every method on (task, seed, W); ``ref``: the task's ``reference`` when the caller has it
    (it depends on the task alone and costs a third of a job: computed once per task)."""
    import logging
    import warnings

    logging.getLogger("syne_tune").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", category=FutureWarning)
    curves = Curves(task)
    ref = task_reference(task) if ref is None else ref
    budget = full_runs * ref["full_seconds"] / workers
    seed = run_seed(task, seed)
    runs: dict[str, Any] = {}
    for method in methods:
        started = time.perf_counter()
        returned = None
        if split_method(method)[0] in DRSEARCH_METHODS:
            trace, returned = run_drsearch(method, curves, seed, workers, budget)
        elif method.startswith("optuna"):
            trace = run_optuna(method, curves, seed, workers, budget)
        else:
            trace = run_synetune(method, curves, seed, workers, budget)
        if returned is None and trace.values:  # the best validation epoch seen
            returned = trace.test[int(np.argmax(trace.values))]
        runs[method] = {
            "times": trace.times, "values": trace.values, "returned_test": returned,
            "epochs": len(trace.values), "seconds": time.perf_counter() - started,
        }  # fmt: skip
    return {"task": task, "seed": seed, "workers": workers, "budget": budget, "reference": ref,
            "runs": runs}  # fmt: skip


# -- figures -----------------------------------------------------------------------------------
def incumbent(run: dict[str, Any], t: float) -> float:
    best = -math.inf
    for time_, value in zip(run["times"], run["values"], strict=True):
        if time_ > t:
            break
        best = max(best, value)
    return best


def scale(r: dict[str, Any]) -> tuple[float, float]:
    """The task's best validation value (any method's, or the reference sample's) and the
    span from the median random configuration to it: regret 0 is the best, 1 the median."""
    reached = [max(x["values"], default=-math.inf) for x in r["runs"].values()]
    best = max([r["reference"]["best_val"], *reached])
    return best, max(best - r["reference"]["median_val"], 1e-9)


#: Bootstrap resamples for the intervals; tasks are resampled (their seeds go with them), since
#: seeds of one task are not independent draws of the benchmark.
RESAMPLES = 2000


def cluster_ci(
    values: list[float], tasks: list[str], stat: Callable[[np.ndarray], float] = np.mean,
    level: float = 0.95,
) -> list[float] | None:  # fmt: skip
    """A percentile bootstrap interval of ``stat`` over ``values``, resampling whole tasks."""
    if not values:
        return None
    by_task: dict[str, list[float]] = {}
    for v, t in zip(values, tasks, strict=True):
        by_task.setdefault(t, []).append(v)
    groups = [np.asarray(v, dtype=float) for v in by_task.values()]
    rng = np.random.default_rng(0)
    draws = []
    for _ in range(RESAMPLES):
        picked = rng.integers(0, len(groups), len(groups))
        draws.append(float(stat(np.concatenate([groups[i] for i in picked]))))
    # a value never reached (inf) stays inf rather than turning an interpolation into nan
    method = "linear" if np.isfinite(draws).all() else "nearest"
    lo, hi = np.quantile(draws, [(1 - level) / 2, (1 + level) / 2], method=method)
    return [float(lo), float(hi)]


def _median(a: np.ndarray) -> float:
    return float(np.quantile(a, 0.5, method="nearest"))  # inf (never reached) stays inf


def figures(
    results: list[dict[str, Any]], methods: tuple[str, ...], default: str = "drsearch"
) -> dict[str, Any]:
    """Per W: regret (median, IQR), average rank with a task-bootstrap interval, each method's
    rank gap to drsearch's default on the same task-seeds (paired: > 0 means the default ranks
    better) with its interval, test regret and time to random's final value (medians with
    intervals)."""
    out: dict[str, Any] = {}
    for workers in sorted({r["workers"] for r in results}):
        mine = [r for r in results if r["workers"] == workers]
        regret: dict[str, dict[float, list[float]]] = {
            m: {f: [] for f in FRACTIONS} for m in methods
        }
        ranks: dict[str, dict[float, list[float]]] = {
            m: {f: [] for f in FRACTIONS} for m in methods
        }
        test_regret: dict[str, list[float]] = {m: [] for m in methods}
        test_tasks: dict[str, list[str]] = {m: [] for m in methods}
        to_random: dict[str, list[float]] = {m: [] for m in methods}
        random_tasks: dict[str, list[str]] = {m: [] for m in methods}
        rank_tasks: dict[str, list[str]] = {m: [] for m in methods}
        gaps: dict[str, dict[float, list[float]]] = {m: {f: [] for f in FRACTIONS} for m in methods}
        for r in mine:
            best, span = scale(r)
            best_test = max([r["reference"]["best_test"]] + [
                x["returned_test"] for x in r["runs"].values() if x["returned_test"] is not None
            ])  # fmt: skip
            test_span = max(best_test - r["reference"]["median_test"], 1e-9)
            for f in FRACTIONS:
                values = {m: (best - incumbent(r["runs"][m], f * r["budget"])) / span
                          for m in methods if m in r["runs"]}  # fmt: skip
                order = sorted(values, key=lambda m: values[m])
                here = {}
                for m, v in values.items():
                    regret[m][f].append(v)
                    ties = [n for n in order if values[n] == v]
                    here[m] = statistics.fmean(order.index(n) + 1 for n in ties)
                    ranks[m][f].append(here[m])
                    if f == FRACTIONS[0]:
                        rank_tasks[m].append(r["task"])
                for m, rank in here.items():
                    if default in here:
                        gaps[m][f].append(rank - here[default])
            target = max(r["runs"]["random"]["values"], default=-math.inf) if "random" in r[
                "runs"] else None  # fmt: skip
            for m in methods:
                run = r["runs"].get(m)
                if run is None:
                    continue
                if run["returned_test"] is not None:
                    test_regret[m].append((best_test - run["returned_test"]) / test_span)
                    test_tasks[m].append(r["task"])
                if target is not None:
                    reached = first_reach(run, target)
                    to_random[m].append(math.inf if reached is None else reached / r["budget"])
                    random_tasks[m].append(r["task"])
        out[f"W={workers}"] = {
            "n": len(mine),
            "regret": {m: {str(f): _summary(v) for f, v in regret[m].items()} for m in methods},
            "rank": {
                m: {str(f): statistics.fmean(v) if v else None for f, v in ranks[m].items()}
                for m in methods
            },  # fmt: skip
            "rank_ci": {
                m: {str(f): cluster_ci(v, rank_tasks[m]) for f, v in ranks[m].items()}
                for m in methods
            },
            "rank_gap_to_default": {
                m: {
                    str(f): {"mean": statistics.fmean(v), "ci": cluster_ci(v, rank_tasks[m])}
                    if v
                    else None
                    for f, v in gaps[m].items()
                }
                for m in methods
                if m != default
            },  # fmt: skip
            "test_regret": {m: _summary(v) for m, v in test_regret.items()},
            "test_regret_median_ci": {
                m: cluster_ci(v, test_tasks[m], _median) for m, v in test_regret.items()
            },
            "time_to_random_final": {m: _summary(v) for m, v in to_random.items()},
            "time_to_random_final_median_ci": {
                m: cluster_ci(v, random_tasks[m], _median) for m, v in to_random.items()
            },
        }
    return out


def first_reach(run: dict[str, Any], target: float) -> float | None:
    """The simulated time a run's incumbent first reaches ``target`` (``None``: never)."""
    return next((t for t, v in zip(run["times"], run["values"], strict=True) if v >= target),
                None)  # fmt: skip


def parallel_speedup(results: list[dict[str, Any]], methods: tuple[str, ...]) -> dict[str, Any]:
    """Per method, over the task-seeds run at W = 1 and at the largest W: how many times
    sooner (simulated time) the W-worker run reaches the value the 1-worker run ended with
    (0 where it never does within its budget, which is the 1-worker budget / W); the share
    never reached; and the W-worker run's final regret minus the 1-worker run's (the same
    compute in 1/W of the time: 0 is as good, > 0 worse), median with its interval."""
    sets = sorted({r["workers"] for r in results})
    if len(sets) < 2 or sets[0] != 1:
        return {}
    many = sets[-1]
    by_key = {(r["task"], r["seed"], r["workers"]): r for r in results}
    out: dict[str, Any] = {"workers": many}
    for m in methods:
        ratios, where, gaps = [], [], []
        for (task, seed, w), one_worker in by_key.items():
            other = by_key.get((task, seed, many))
            if w != 1 or other is None or m not in one_worker["runs"] or m not in other["runs"]:
                continue
            final = max(one_worker["runs"][m]["values"], default=-math.inf)
            t1 = first_reach(one_worker["runs"][m], final)
            tw = first_reach(other["runs"][m], final)
            if t1 is not None:
                ratios.append(0.0 if tw is None else t1 / max(tw, 1e-9))
                where.append(task)
                best = max(scale(one_worker)[0], scale(other)[0])  # one scale for both
                span = max(best - one_worker["reference"]["median_val"], 1e-9)
                gaps.append((final - max(other["runs"][m]["values"], default=-math.inf)) / span)
        out[m] = _summary(ratios)
        if out[m] is not None:
            out[m]["median_ci"] = cluster_ci(ratios, where, _median)
            out[m]["never"] = ratios.count(0.0) / len(ratios)
            out[m]["final_regret_gap"] = _median(np.array(gaps))
            out[m]["final_regret_gap_ci"] = cluster_ci(gaps, where, _median)
    return out


def _summary(values: list[float]) -> dict[str, float] | None:
    """Median and quartiles (the nearest order statistics: a value never reached, ``inf``,
    stays ``inf`` instead of spoiling an interpolation)."""
    if not values:
        return None
    q = np.quantile(values, [0.25, 0.5, 0.75], method="nearest")
    return {"median": float(q[1]), "q25": float(q[0]), "q75": float(q[2]), "n": len(values)}


def curves_page(
    results: list[dict[str, Any]], methods: tuple[str, ...], path: Path,
    summary: dict[str, Any] | None = None, default: str = "drsearch",
) -> None:  # fmt: skip
    """Anytime normalized regret (median and interquartile band over tasks and seeds) and
    anytime average rank per W, then the figures of ``summary`` as tables."""

    import plotly.graph_objects as go
    from plotly.subplots import make_subplots
    from scipy.stats import rankdata

    grid = np.linspace(0.02, 1.0, 50)
    sets = sorted({r["workers"] for r in results})
    fig = make_subplots(rows=2, cols=len(sets), vertical_spacing=0.12,
                        subplot_titles=[f"W = {w}: regret" for w in sets]
                        + [f"W = {w}: average rank" for w in sets])  # fmt: skip
    palette = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2",
               "#7f7f7f", "#bcbd22", "#17becf"]  # fmt: skip
    for col, workers in enumerate(sets, start=1):
        mine = [r for r in results if r["workers"] == workers]
        regret = np.empty((len(methods), len(mine), len(grid)))
        for i, r in enumerate(mine):
            best, span = scale(r)
            for k, m in enumerate(methods):
                regret[k, i] = [(best - incumbent(r["runs"][m], f * r["budget"])) / span
                                for f in grid]  # fmt: skip
        ranks = rankdata(regret, axis=0, method="average").mean(axis=1)  # ties share a rank
        for k, m in enumerate(methods):
            arr = np.clip(regret[k], 1e-4, 10)
            q25, q50, q75 = np.quantile(arr, [0.25, 0.5, 0.75], axis=0)
            color = palette[k % len(palette)]
            width = 3 if m == default else 1.5
            line = go.Scatter(x=grid, y=q50, name=m, line={"color": color, "width": width},
                              legendgroup=m, showlegend=col == 1)  # fmt: skip
            fig.add_trace(line, row=1, col=col)
            fig.add_trace(go.Scatter(
                x=np.concatenate([grid, grid[::-1]]), y=np.concatenate([q75, q25[::-1]]),
                fill="toself", fillcolor=color, opacity=0.15, line={"width": 0},
                legendgroup=m, showlegend=False, hoverinfo="skip"), row=1, col=col)  # fmt: skip
            fig.add_trace(go.Scatter(x=grid, y=ranks[k], name=m, legendgroup=m,
                                     line={"color": color, "width": width}, showlegend=False),
                          row=2, col=col)  # fmt: skip
        fig.update_yaxes(type="log", title_text="normalized regret (median, IQR)", row=1, col=col)
        fig.update_yaxes(title_text="average rank (1 = best)", row=2, col=col)
        fig.update_xaxes(title_text="fraction of the simulated time budget", row=2, col=col)
    n = len({(r["task"], r["seed"]) for r in results})
    fig.update_layout(title="LCBench (YAHPO surrogate): anytime regret of validation balanced "
                      f"accuracy, {n} task-seeds per W", height=900, template="plotly_white",
                      legend={"orientation": "h", "y": -0.12})  # fmt: skip
    tables = _summary_tables(summary, methods, default) if summary else ""
    page = fig.to_html(include_plotlyjs=True, full_html=True)
    page = page.replace("</body>", tables + "</body>") if tables else page
    path.write_text(page)


def _summary_tables(summary: dict[str, Any], methods: tuple[str, ...], default: str) -> str:
    """The figures as HTML tables: average rank with its 95% task-bootstrap interval, the
    paired rank gap to ``default``, medians of regret, test regret and time to random's final
    value, and the W=1 -> W speed-up."""
    import html

    def ci(pair: Any) -> str:
        return f" [{pair[0]:.2f}, {pair[1]:.2f}]" if pair else ""

    def cell(text: str, bold: bool = False) -> str:
        return f"<td>{'<b>' if bold else ''}{html.escape(text)}{'</b>' if bold else ''}</td>"

    out = ['<div style="font-family:sans-serif;font-size:13px;margin:0 24px 40px">']
    speed = summary.get("parallel_speedup") or {}
    for key, s in summary.items():
        if key == "parallel_speedup":
            continue
        fracs = [str(f) for f in FRACTIONS]
        best = {f: min(s["rank"][m][f] for m in methods if s["rank"][m][f] is not None)
                for f in fracs}  # fmt: skip
        head = "".join(f"<th>rank at {float(f):.0%}</th>" for f in fracs)
        out.append(f"<h3>{html.escape(key)}: {s['n']} task-seeds</h3><table border=1 "
                   "cellpadding=4 style='border-collapse:collapse'><tr><th>method</th>"
                   f"{head}<th>rank gap to {html.escape(default)} at 100% (&gt; 0: "
                   f"{html.escape(default)} better)</th><th>regret at 100%, median [IQR]</th>"
                   "<th>test regret, median [95%]</th><th>time to random's final, median "
                   "[95%]</th><th>W=1 final reached sooner with W="
                   f"{speed.get('workers', '-')}, median [95%]</th></tr>")  # fmt: skip
        for m in methods:
            row = [cell(m, m == default)]
            for f in fracs:
                rank = s["rank"][m][f]
                text = "-" if rank is None else f"{rank:.2f}{ci(s['rank_ci'][m][f])}"
                row.append(cell(text, rank is not None and rank == best[f]))
            gap = (s["rank_gap_to_default"].get(m) or {}).get("1.0")
            row.append(cell(f"{gap['mean']:+.2f}{ci(gap['ci'])}" if gap else "-"))
            q = s["regret"][m]["1.0"]
            row.append(cell(f"{q['median']:.3f} [{q['q25']:.3f}-{q['q75']:.3f}]" if q else "-"))
            t = s["test_regret"][m]
            row.append(cell(f"{t['median']:.3f}{ci(s['test_regret_median_ci'][m])}"
                            if t else "-"))  # fmt: skip
            t = s["time_to_random_final"][m]
            row.append(cell(f"{t['median']:.2f}{ci(s['time_to_random_final_median_ci'][m])}"
                            if t else "- (random not run)"))  # fmt: skip
            q = speed.get(m) if key != "W=1" else None
            row.append(cell(f"{q['median']:.2f}{ci(q.get('median_ci'))}" if q else "-"))
            out.append("<tr>" + "".join(row) + "</tr>")
        out.append("</table>")
    out.append("<p>Intervals: 95% percentile bootstrap over tasks (a task's seeds resampled "
               "with it). Bold: the best average rank at that fraction.</p></div>")  # fmt: skip
    return "\n".join(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="6 tasks, 3 seeds, W = 1 and 4")
    parser.add_argument("--tasks", nargs="+", default=None, help="task ids, or 'all'")
    parser.add_argument("--seeds", type=int, default=10)
    parser.add_argument(
        "--seed-offset",
        type=int,
        default=0,
        help="seeds offset..offset+seeds-1 (fresh seeds for a confirming run)",
    )
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 4])
    parser.add_argument("--full-runs", type=float, default=30)
    parser.add_argument("--methods", nargs="+", default=list(METHODS))
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument(
        "--default", default="drsearch", help="the method the paired rank gaps are measured against"
    )
    parser.add_argument("--out", type=Path, default=Path("reports/bench/hpo_lcbench.json"))
    parser.add_argument("--summarize", type=Path, nargs="+", default=None,
                        help="recompute the figures and page of earlier --out files (several: "
                        "their runs together, e.g. more seeds; written to --out)")  # fmt: skip
    parser.add_argument("--rename", nargs="+", default=[], metavar="OLD=NEW",
                        help="with --summarize: methods of the files under today's names, e.g. "
                        "after a default changed (drsearch=drsearch-random "
                        "drsearch-tpe-top=drsearch)")  # fmt: skip
    args = parser.parse_args()
    if args.rename and args.summarize is None:
        parser.error("--rename: with --summarize (it renames the methods of the files read)")
    if any(pair.count("=") != 1 or pair.startswith("=") or pair.endswith("=")
           for pair in args.rename):  # fmt: skip
        parser.error(f"--rename: expected OLD=NEW pairs, got {' '.join(args.rename)}")
    if args.summarize is not None:
        names = dict(pair.split("=", 1) for pair in args.rename)
        if len(set(names.values())) < len(names):
            parser.error("--rename: two methods renamed to one name")
        files = [renamed(_load(path), names) for path in args.summarize]
        saved = files[0]["args"] or vars(args) | {"out": str(args.out), "summarize": None}
        if args.methods != parser.get_default("methods"):
            methods = tuple(args.methods)
        else:
            methods = tuple(
                dict.fromkeys(m for f in files if f["args"] for m in f["args"]["methods"])
            )
        results = merge([f["results"] for f in files], methods)
        saved = saved | {"methods": list(methods)}
        if len(files) == 1 and args.out == parser.get_default("out") and files[0]["args"]:
            args.out = args.summarize[0]
        report(results, methods, args, saved, 0.0)
        return
    chosen = list(QUICK_TASKS) if args.quick else (
        tasks() if not args.tasks or args.tasks == ["all"] else args.tasks)  # fmt: skip
    seeds = range(args.seed_offset, args.seed_offset + (3 if args.quick else args.seeds))
    methods = tuple(args.methods)
    # seed by seed (every task and W of a seed before the next seed): a run cut off leaves
    # whole seeds, not some tasks with all their seeds and others with none
    jobs = [(t, s, w) for s in seeds for t in chosen for w in args.workers]
    started = time.perf_counter()
    # every finished (task, seed, W) is appended to a log as it ends: a run cut off goes on
    # from there when started again with the same arguments
    log = args.out.with_suffix(".partial.jsonl")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    done: dict[tuple[Any, ...], dict[str, Any]] = {}
    if log.exists():
        for line in log.read_text().splitlines():
            entry = json.loads(line)
            if (entry["full_runs"], entry["methods"], entry.get("names")) == (
                args.full_runs, list(methods), NAMES,
            ):  # fmt: skip
                done[tuple(entry["key"])] = entry["result"]
    results = [done[job] for job in jobs if job in done]
    todo = [job for job in jobs if job not in done]
    with ProcessPoolExecutor(max_workers=args.jobs) as pool, log.open("a") as out:
        needed = list(dict.fromkeys(t for t, _, _ in todo))
        refs = dict(zip(needed, pool.map(task_reference, needed), strict=True))
        futures = {pool.submit(one, t, s, w, args.full_runs, methods, refs[t]): (t, s, w)
                   for t, s, w in todo}  # fmt: skip
        for future in as_completed(futures):
            results.append(future.result())
            entry = {"key": list(futures[future]), "full_runs": args.full_runs, "names": NAMES,
                     "methods": list(methods), "result": results[-1]}  # fmt: skip
            out.write(json.dumps(entry) + "\n")
            out.flush()
            print(f"\r{len(results)}/{len(jobs)} task-seed-W runs", end="", file=sys.stderr)
    print(file=sys.stderr)
    results.sort(key=lambda r: (r["workers"], r["task"], r["seed"]))
    saved = vars(args) | {"out": str(args.out), "summarize": None, "methods": list(methods)}
    report(results, methods, args, saved, time.perf_counter() - started)


def merge(runs: list[list[dict[str, Any]]], methods: tuple[str, ...]) -> list[dict[str, Any]]:
    """Results of several runs as one: a (task, seed, W) found in several gets the methods of
    each (a later run's result of a method replaces an earlier one's). Every method's run is
    reproducible from (task, seed, W) alone, so methods run apart are the runs they would
    have been side by side. Only (task, seed, W) with every one of ``methods`` are kept, and
    only seeds with every (task, W): ranks are over the same methods everywhere."""
    merged: dict[tuple[Any, ...], dict[str, Any]] = {}
    for results in runs:
        for r in results:
            key = (r["task"], r["seed"], r["workers"])
            have = merged.setdefault(key, {**r, "runs": {}})
            if not math.isclose(have["budget"], r["budget"], rel_tol=1e-9):
                raise SystemExit(
                    f"{key}: runs with different budgets ({have['budget']} and {r['budget']}: "
                    "--full-runs differs) cannot be merged"
                )
            have["runs"].update(r["runs"])
    whole = [
        r | {"runs": {m: r["runs"][m] for m in methods}}
        for r in merged.values()
        if all(m in r["runs"] for m in methods)
    ]
    if any("seed_index" not in r for r in whole):  # a finished run's file: whole already
        return whole
    cells = {(r["task"], r["workers"]) for r in merged.values()}
    by_seed: dict[Any, set[tuple[Any, Any]]] = {}
    for r in whole:
        by_seed.setdefault(r["seed_index"], set()).add((r["task"], r["workers"]))
    kept = {seed for seed, have in by_seed.items() if have == cells}
    print(f"merged: seeds {sorted(kept)} have every task, W and method ({len(methods)} "
          "methods)", file=sys.stderr)  # fmt: skip
    for m in methods:  # say what a method lacks, when that cost seeds
        lacking = sorted({r["seed_index"] for r in merged.values() if m not in r["runs"]})
        if lacking:
            print(f"  {m} has not run every task and W of seeds {lacking}", file=sys.stderr)
    return [r for r in whole if r["seed_index"] in kept]


def renamed(loaded: dict[str, Any], names: dict[str, str]) -> dict[str, Any]:
    """A loaded file with its methods under new names (all at once: ``a=b b=a`` swaps). Only
    sound where the method under its new name reproduces the run: each is a function of
    (task, seed, W) and of what its name configures."""
    if not names:
        return loaded
    kept = {m for r in loaded["results"] for m in r["runs"]} - set(names)
    if kept & set(names.values()):
        raise SystemExit(f"--rename: {', '.join(sorted(kept & set(names.values())))} is "
                         "already a method of the file; rename it too")  # fmt: skip
    results = [r | {"runs": {names.get(m, m): run for m, run in r["runs"].items()}}
               for r in loaded["results"]]  # fmt: skip
    args = loaded["args"]
    if args:
        args = args | {"methods": [names.get(m, m) for m in args["methods"]]}
    return {"results": results, "args": args}


def _load(path: Path) -> dict[str, Any]:
    """An ``--out`` file, or a run's ``.partial.jsonl`` log: every result it holds, with the
    run's seed (``seed_index``); ``merge`` keeps only whole seeds, so that a cut-off run is
    not a biased sample. A log resumed with other ``--methods`` holds several runs: ``merge``
    joins them method by method."""
    if path.suffix != ".jsonl":
        return json.loads(path.read_text())
    entries = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    # the run's seed (``seed`` in a result is the one derived from it for the task)
    results = [e["result"] | {"seed_index": e["key"][1]} for e in entries]
    print(f"{path}: {len(results)} runs of seeds {sorted({e['key'][1] for e in entries})}",
          file=sys.stderr)  # fmt: skip
    listed = list(dict.fromkeys(m for e in entries for m in e["methods"]))
    saved = {"methods": listed, "full_runs": entries[0]["full_runs"]} if entries else None
    return {"results": results, "args": saved}


def report(results: list[dict[str, Any]], methods: tuple[str, ...], args: argparse.Namespace,
           saved: dict[str, Any], seconds: float) -> None:  # fmt: skip
    """Figures of ``results``: the JSON (results and summary), the HTML page and the table."""
    summary = figures(results, methods, args.default)
    summary["parallel_speedup"] = parallel_speedup(results, methods)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"summary": summary, "results": results, "args": saved}))
    curves_page(results, methods, args.out.with_suffix(".html"), summary, args.default)
    n_tasks, n_seeds = len({r["task"] for r in results}), len({r["seed"] for r in results})
    print(
        f"{n_tasks} tasks, {n_seeds} task-seeds, W in {sorted({r['workers'] for r in results})}"
        f", budget {saved['full_runs']:g} full runs of simulated time; {seconds:.0f} s"
    )
    for key, s in summary.items():
        if key == "parallel_speedup":
            continue
        print(
            f"\n{key} ({s['n']} task-seeds): normalized regret median [IQR] at "
            f"{', '.join(f'{f:.0%}' for f in FRACTIONS)}; average rank; test regret of the "
            "returned configuration; time to random's final value (fraction of budget)"
        )
        for m in methods:
            cells = []
            for f in FRACTIONS:
                q = s["regret"][m][str(f)]
                cells.append(f"{q['median']:.3f} [{q['q25']:.3f}-{q['q75']:.3f}]" if q else "n/a")
            ranks = " ".join(
                f"{s['rank'][m][str(f)]:.2f} [{lo:.2f}-{hi:.2f}]"
                for f in FRACTIONS
                for lo, hi in [s["rank_ci"][m][str(f)] or (math.nan, math.nan)]
            )
            tr, tt = s["test_regret"][m], s["time_to_random_final"][m]
            test = f"{tr['median']:.3f}" if tr else "n/a"
            to_random = f"{tt['median']:.2f}" if tt else "n/a (random not run)"
            print(f"  {m:20s} {' | '.join(cells)} | rank {ranks} | test {test} | "
                  f"to random {to_random}")  # fmt: skip
    speed = summary["parallel_speedup"]
    if speed:
        print(f"\nW={speed['workers']} against W=1: times sooner the 1-worker final value is "
              "reached, median [IQR] (0: never within the budget)")  # fmt: skip
        for m in methods:
            q = speed.get(m)
            if q:
                lo, hi = q.get("median_ci") or (math.nan, math.nan)
                glo, ghi = q["final_regret_gap_ci"]
                print(f"  {m:20s} {q['median']:.2f} [{q['q25']:.2f}-{q['q75']:.2f}], median's "
                      f"95% interval {lo:.2f}-{hi:.2f}; never {q['never']:.0%}; final regret "
                      f"W={speed['workers']} minus W=1 {q['final_regret_gap']:+.3f} "
                      f"({glo:+.3f} to {ghi:+.3f})")  # fmt: skip
    for key, s in summary.items():
        if key == "parallel_speedup":
            continue
        print(f"\n{key}: paired rank gap to {args.default} (> 0: it ranks better), "
              "mean and 95% task-bootstrap interval at "
              f"{', '.join(f'{f:.0%}' for f in FRACTIONS)}; medians' intervals of test regret "
              "and time to random's final value")  # fmt: skip
        for m in methods:
            cells = []
            for f in FRACTIONS:
                g = s["rank_gap_to_default"].get(m, {}).get(str(f))
                cells.append(f"{g['mean']:+.2f} [{g['ci'][0]:+.2f},{g['ci'][1]:+.2f}]" if g
                             else "-")  # fmt: skip
            t_ci = s["test_regret_median_ci"][m] or (math.nan, math.nan)
            r_ci = s["time_to_random_final_median_ci"][m] or (math.nan, math.nan)
            print(f"  {m:20s} {' | '.join(cells)} | test {t_ci[0]:.3f}-{t_ci[1]:.3f} | "
                  f"to random {r_ci[0]:.2f}-{r_ci[1]:.2f}")  # fmt: skip
    print("\n" + markdown_ranks(summary, methods))
    print(f"\nresults -> {args.out} and {args.out.with_suffix('.html')}")


def markdown_ranks(summary: dict[str, Any], methods: tuple[str, ...]) -> str:
    """Average ranks at each fraction as a Markdown table (method x W), the best bold: the
    table bench/README.md shows, written by the run rather than copied by hand."""
    sets = [k for k in summary if k != "parallel_speedup"]
    fracs = [str(f) for f in FRACTIONS]
    best = {
        (k, f): min(v for m in methods if (v := summary[k]["rank"][m][f]) is not None)
        for k in sets for f in fracs
    }  # fmt: skip
    lines = ["| method | " + " | ".join(sets) + " |", "| --- |" + " --- |" * len(sets)]
    order = sorted(methods, key=lambda m: summary[sets[-1]]["rank"][m][fracs[-1]] or math.inf)
    for m in order:
        cells = []
        for k in sets:
            ranks = [summary[k]["rank"][m][f] for f in fracs]
            cells.append(" / ".join(
                "-" if v is None else (f"**{v:.2f}**" if v == best[(k, f)] else f"{v:.2f}")
                for v, f in zip(ranks, fracs, strict=True)
            ))  # fmt: skip
        lines.append(f"| {m} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
