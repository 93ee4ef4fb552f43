"""The simulated executor: the runners' own decisions on a simulated clock, for any
trainable behind the trainer's reporter seam."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import pytest
from optuna.trial import TrialState

from drsearch.config.space import FloatParam
from drsearch.config.study import load_study
from drsearch.search.runners.simulated import SimEvent, run_simulated
from drsearch.search.store import StudyStore
from drsearch.train.seam import Reporter
from tests.conftest import write_tiny_study
from tests.test_promotion import _drive_local, _study
from tests.test_pruning import CURVES


def curve_trainable(curves: list[list[float]], seconds: list[float]) -> Any:
    """Not the DR trainer: trial n follows ``curves[n]``, each epoch ``seconds[n]`` long,
    reported as the trainer reports (its best epoch so far by the metric)."""

    def train(config: int, reporter: Reporter, done: int) -> None:
        best, best_epoch = float("-inf"), 0
        for epoch, value in enumerate(curves[config], start=1):
            if value > best:
                best, best_epoch = value, epoch
            reporter(epoch, {
                "epoch": epoch, "val": {"accuracy": value}, "best_epoch": best_epoch,
                "lr": {}, "train": {"loss": 1 - value}, "epoch_seconds": seconds[config],
                "replayed": epoch <= done,
            })  # fmt: skip

    return train


def by_number(params: dict[str, Any], label: str) -> tuple[int, int]:
    """The trial's own curve (``trial N`` follows curve N), over 8 epochs."""
    return int(label.split()[1]), 8


def _simulated(path: Path, workers: int, seconds: list[float]) -> tuple[Any, StudyStore]:
    loaded = load_study(path)
    store = StudyStore(loaded.config)
    result = run_simulated(
        store, loaded, curve_trainable(CURVES, seconds), by_number, workers=workers
    )
    return result, store


def test_one_simulated_worker_decides_as_the_local_executor(
    tmp_path: Path, tiny_dataset: Path
) -> None:
    (tmp_path / "local").mkdir()
    (tmp_path / "sim").mkdir()
    local_path = _study(tmp_path / "local", tiny_dataset)
    loaded = load_study(local_path)
    local_store = StudyStore(loaded.config)
    expected = _drive_local(local_store, loaded)
    result, store = _simulated(_study(tmp_path / "sim", tiny_dataset), 1, [10.0] * 6)
    decided = [(e.trial, e.epoch, e.decision) for e in result.events if e.decision == "pause"]
    assert decided == expected  # every pause, in the same order
    got = [(t.state, t.intermediate_values) for t in store.study.get_trials()]
    assert got == [(t.state, t.intermediate_values) for t in local_store.study.get_trials()]
    # in simulated seconds: one worker, 10 s an epoch, nothing else takes time
    trained = sum(len(t.intermediate_values) for t in store.study.get_trials())
    assert result.elapsed == pytest.approx(10.0 * trained)


def test_two_workers_follow_a_schedule_worked_by_hand(tmp_path: Path, tiny_dataset: Path) -> None:
    """Promotion ASHA (rungs 1, 2; eta 2), 3 trials on 2 workers, 4 epochs each:
    trial 0 (10 s an epoch) 0.5 0.6 0.7 0.8; trial 1 (5 s) 0.2 0.25 0.3 0.31; trial 2 (10 s)
    0.55 0.65 0.72 0.75. By hand: at 0, worker 0 starts 0 and worker 1 starts 1. At 5, 1
    pauses at rung 1 (alone: no top half) and worker 1 starts 2. At 10, 0 goes on at rung 1
    (top 1 of 2). At 15, 2 goes on at rung 1 (top 1 of 3). At 20, 0 pauses at rung 2 (alone);
    worker 0 waits (a trial runs that may make it promotable). At 25, 2 goes on at rung 2 (top
    1 of 2, above 0). 2 ends its 4 epochs at 45; then nothing runs and the budget is claimed:
    the paused 0 (rung 2) and 1 (rung 1) are pruned, 0 not finished since 2 completed past
    its rung."""
    path = write_tiny_study(
        tmp_path, tiny_dataset, "optim.lr: {type: float, low: 1.0e-4, high: 1.0e-2}\n",
        pruner={"grace_period": 1, "reduction_factor": 2, "mode": "promotion"},
        budget={"n_trials": 3}, recipe_overrides={"train.epochs": 4},
        objective={"metric": "accuracy", "constraints": []},
    )  # fmt: skip
    curves = [[0.5, 0.6, 0.7, 0.8], [0.2, 0.25, 0.3, 0.31], [0.55, 0.65, 0.72, 0.75]]
    loaded = load_study(path)
    store = StudyStore(loaded.config)
    result = run_simulated(
        store, loaded, curve_trainable(curves, [10.0, 5.0, 10.0]),
        lambda params, label: (int(label.split()[1]), 4), workers=2,
    )  # fmt: skip
    assert result.events == [
        SimEvent(0.0, 0, 0, 0, "start"),
        SimEvent(0.0, 1, 1, 0, "start"),
        SimEvent(5.0, 1, 1, 1, "pause"),
        SimEvent(5.0, 1, 2, 0, "start"),
        SimEvent(10.0, 0, 0, 1, "continue"),
        SimEvent(15.0, 1, 2, 1, "continue"),
        SimEvent(20.0, 0, 0, 2, "pause"),
        SimEvent(25.0, 1, 2, 2, "continue"),
        SimEvent(35.0, 1, 2, 3, "continue"),
        SimEvent(45.0, 1, 2, 4, "continue"),
        SimEvent(45.0, 1, 2, 4, "complete"),
        SimEvent(45.0, 1, 0, 2, "prune"),
        SimEvent(45.0, 1, 1, 1, "prune"),
    ]
    assert result.elapsed == 45.0
    states = [t.state for t in store.study.get_trials()]
    assert states == [TrialState.PRUNED, TrialState.PRUNED, TrialState.COMPLETE]
    assert store.study.get_trials()[2].user_attrs["train_seconds"] == 40.0


def test_a_budget_below_eta_to_the_k_completes_its_leader_on_the_simulator(
    tmp_path: Path, tiny_dataset: Path
) -> None:
    path = _study(tmp_path, tiny_dataset, budget={"n_trials": 2})
    result, store = _simulated(path, 2, [10.0] * 6)
    first, second = store.study.get_trials()
    assert first.state == TrialState.COMPLETE and max(first.intermediate_values) == 8
    assert second.state == TrialState.PRUNED
    assert [e.decision for e in result.events if e.trial == 0][-1] == "complete"


def test_a_trainable_that_fails_fails_its_trial_only(tmp_path: Path, tiny_dataset: Path) -> None:
    path = write_tiny_study(
        tmp_path, tiny_dataset, "optim.lr: {type: float, low: 1.0e-4, high: 1.0e-2}\n",
        pruner={"enabled": False}, budget={"n_trials": 2},
        objective={"metric": "accuracy", "constraints": []},
    )  # fmt: skip
    loaded = dataclasses.replace(
        load_study(path), space={"x": FloatParam(type="float", low=0.0, high=1.0)}
    )
    store = StudyStore(loaded.config)

    def flaky(config: dict[str, Any], reporter: Reporter, done: int) -> None:
        if config["x"] > 0.5:
            raise ValueError("diverged")
        reporter(1, {"epoch": 1, "val": {"accuracy": config["x"]}, "best_epoch": 1, "lr": {},
                     "train": {"loss": 1.0}, "epoch_seconds": 3.0})  # fmt: skip

    store.study.enqueue_trial({"x": 0.9})
    store.study.enqueue_trial({"x": 0.2})
    result = run_simulated(store, loaded, flaky, lambda p, label: (p, 1), workers=1)
    bad, good = store.study.get_trials()
    assert bad.state == TrialState.FAIL and bad.user_attrs["fail_reason"] == "ValueError: diverged"
    assert good.state == TrialState.COMPLETE and good.value == pytest.approx(0.2)
    assert result.elapsed == 3.0


def test_a_study_in_memory_decides_as_one_in_sqlite(tmp_path: Path, tiny_dataset: Path) -> None:
    from drsearch.search.runners.simulated import memory_store

    path = write_tiny_study(
        tmp_path, tiny_dataset, "optim.lr: {type: float, low: 1.0e-4, high: 1.0e-2}\n",
        pruner={"grace_period": 1, "reduction_factor": 2}, budget={"n_trials": 12},
        sampler={"name": "tpe", "fit_on": "outcomes", "seed": 3, "n_startup_trials": 4},
        objective={"metric": "accuracy", "constraints": []},
    )  # fmt: skip
    loaded = dataclasses.replace(
        load_study(path), space={"x": FloatParam(type="float", low=0.0, high=1.0)}
    )

    def smooth(config: dict[str, Any], reporter: Reporter, done: int) -> None:
        for epoch in range(1, 9):
            value = (1 - abs(config["x"] - 0.3)) * epoch / 8
            reporter(epoch, {"epoch": epoch, "val": {"accuracy": value}, "best_epoch": epoch,
                             "lr": {}, "train": {"loss": 0.0}, "epoch_seconds": 2.0})  # fmt: skip

    runs = []
    for store in (StudyStore(loaded.config), memory_store(loaded.config)):
        result = run_simulated(store, loaded, smooth, lambda p, label: (p, 8), workers=3)
        trials = store.study.get_trials()
        runs.append((result.events, [(t.params, t.state, t.value) for t in trials]))
    assert runs[0] == runs[1]


def test_a_time_budget_ends_the_run_before_an_epoch_that_would_pass_it(
    tmp_path: Path, tiny_dataset: Path
) -> None:
    path = _study(tmp_path, tiny_dataset)
    loaded = load_study(path)
    store = StudyStore(loaded.config)
    result = run_simulated(
        store, loaded, curve_trainable(CURVES, [10.0] * 6), by_number, workers=2, until=35.0
    )
    assert max(e.time for e in result.events) <= 35.0
    # two workers, 10 s an epoch: epochs end at 10, 20, 30 on each; none at 40
    trained = sum(len(t.intermediate_values) for t in store.study.get_trials())
    assert trained == 6 and result.elapsed == 30.0


def test_tpe_fitted_on_the_top_rung_runs_a_promotion_study_alike_in_sqlite_and_memory(
    tmp_path: Path, tiny_dataset: Path
) -> None:
    """``sampler.fit_on: top_rung`` through the real runner code (3 workers, promotion ASHA):
    SQLite and memory decide alike, and by the end TPE is fitted on the last epoch."""
    from drsearch.search.runners.simulated import memory_store
    from drsearch.search.samplers import _AtTopRung

    path = write_tiny_study(
        tmp_path, tiny_dataset, "optim.lr: {type: float, low: 1.0e-4, high: 1.0e-2}\n",
        pruner={"mode": "promotion", "grace_period": 1, "reduction_factor": 2},
        budget={"n_trials": 20}, objective={"metric": "accuracy", "constraints": []},
        sampler={"name": "tpe", "seed": 3, "n_startup_trials": 5, "fit_on": "top_rung"},
    )  # fmt: skip
    loaded = dataclasses.replace(
        load_study(path), space={"x": FloatParam(type="float", low=0.0, high=1.0)}
    )
    assert loaded.max_epochs == 3

    def smooth(config: dict[str, Any], reporter: Reporter, done: int) -> None:
        for epoch in range(done + 1, 4):
            value = (1 - abs(config["x"] - 0.3)) * epoch / 8
            reporter(epoch, {"epoch": epoch, "val": {"accuracy": value}, "best_epoch": epoch,
                             "lr": {}, "train": {"loss": 0.0}, "epoch_seconds": 2.0})  # fmt: skip

    runs = []
    for store in (StudyStore(loaded.config), memory_store(loaded.config)):
        run_simulated(store, loaded, smooth, lambda p, label: (p, 3), workers=3)
        trials = sorted(store.study.get_trials(), key=lambda t: t.number)
        runs.append([(t.params, t.state, t.value) for t in trials])
    assert runs[0] == runs[1]
    assert len(runs[0]) == 20
    complete = [t for t in store.study.get_trials() if t.state == TrialState.COMPLETE]
    assert len(complete) >= 5
    seen = _AtTopRung(store.study, [1, 2], 5)._get_trials(states=(TrialState.COMPLETE,))
    # at the last epoch (3): the complete trials, by their value there
    assert sorted(t.number for t in seen) == sorted(t.number for t in complete)
    assert all(t.value == t.intermediate_values[3] for t in seen)
