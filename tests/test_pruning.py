"""One pruning rule for both executors: the same curves get the same decisions at the same rungs.

The local executor calls ``after_epoch`` from its reporter; under Ray, ``StudyScheduler`` calls
it for each result. Here identical curves are fed through both paths, with no training.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from drsearch.config.study import load_study
from drsearch.search.runners.common import SilentProgress, after_epoch, finish_trial, start_trial
from drsearch.search.runners.ray import _classes
from drsearch.search.store import StudyStore
from drsearch.search.trial import EpochReport, TrialEnd, to_message
from tests.conftest import write_tiny_study

#: Pruning-metric curves of six trials over 8 epochs, run one after another.
CURVES = [
    [0.50, 0.60, 0.70, 0.72, 0.74, 0.75, 0.76, 0.77],
    [0.20, 0.25, 0.30, 0.31, 0.32, 0.33, 0.34, 0.35],  # worse from the start
    [0.55, 0.65, 0.72, 0.75, 0.76, 0.78, 0.80, 0.81],
    [0.52, 0.58, 0.60, 0.61, 0.62, 0.63, 0.64, 0.65],  # below the top half at epoch 2
    [0.60, 0.70, 0.75, 0.78, 0.80, 0.82, 0.83, 0.84],
    [0.10, 0.90, 0.90, 0.90, 0.90, 0.90, 0.90, 0.90],  # a slow starter
]


def report(epoch: int, value: float) -> EpochReport:
    metrics = {"accuracy": value, "sensitivity": [None] * 5}
    return EpochReport(epoch, value, epoch, metrics, {"head": 1e-3}, 1.0, 0.1)


class _Trial:
    def __init__(self, trial_id: str) -> None:
        self.trial_id = trial_id


def _local(store: StudyStore, loaded, number: int) -> list[str]:  # type: ignore[no-untyped-def]
    ctx = start_trial(store, loaded, SilentProgress(), threads=None)
    assert ctx
    decisions = []
    # the trainer trains the trial recipe's epochs (pruner.max_epochs plans them)
    for epoch, value in enumerate(CURVES[number][: ctx.recipe.train.epochs], start=1):
        decisions.append(after_epoch(store, ctx, report(epoch, value), SilentProgress()))
        if decisions[-1] != "continue":
            break
    else:
        ctx.end = TrialEnd("finished")
    finish_trial(store, ctx, SilentProgress())
    return decisions


def _ray(searcher, scheduler, number: int, epochs: int) -> list[str]:  # type: ignore[no-untyped-def]
    from ray.tune.schedulers import TrialScheduler

    ray_id = f"ray_{number}"
    config = searcher.suggest(ray_id)
    assert config["trial_number"] == number
    decisions = []
    for epoch, value in enumerate(CURVES[number][:epochs], start=1):
        result = to_message(report(epoch, value))
        action = scheduler.on_trial_result(None, _Trial(ray_id), result)
        decisions.append("continue" if action == TrialScheduler.CONTINUE else "stop")
        if action == TrialScheduler.STOP:
            break
    else:
        result = to_message(TrialEnd("finished"))
        assert scheduler.on_trial_result(None, _Trial(ray_id), result) == TrialScheduler.CONTINUE
    searcher.on_trial_complete(ray_id, result)
    return decisions


@pytest.mark.parametrize("max_epochs", [None, 6])
def test_both_executors_decide_alike_at_the_same_rungs(
    tmp_path: Path, tiny_dataset: Path, max_epochs: int | None
) -> None:
    pruner = {"grace_period": 1, "reduction_factor": 2, "max_epochs": max_epochs}
    outcomes = {}
    for executor in ("local", "ray"):
        folder = tmp_path / executor
        folder.mkdir()
        path = write_tiny_study(
            folder,
            tiny_dataset,
            "optim.lr: {type: float, low: 1.0e-4, high: 1.0e-2, log: true}\n",
            executor=executor,
            pruner=pruner,
            budget={"n_trials": len(CURVES)},
            recipe_overrides={"train.epochs": 8},
        )
        loaded = load_study(path)
        store = StudyStore(loaded.config)
        if executor == "local":
            decisions = [_local(store, loaded, n) for n in range(len(CURVES))]
        else:
            searcher_class, scheduler_class = _classes()
            searcher = searcher_class(store, loaded, SilentProgress(), None)
            scheduler = scheduler_class(searcher)
            epochs = loaded.recipe.train.epochs
            decisions = [_ray(searcher, scheduler, n, epochs) for n in range(len(CURVES))]
        trials = store.study.get_trials()
        outcomes[executor] = [
            (len(d), t.state.name, t.value, t.user_attrs.get("pruned_at_epoch"))
            for d, t in zip(decisions, trials, strict=True)
        ]
    assert outcomes["local"] == outcomes["ray"]
    states = [state for _, state, _, _ in outcomes["local"]]
    pruned_at = [at for _, _, _, at in outcomes["local"]]
    if max_epochs is None:
        # rungs at epochs 1, 2 and 4 (grace 1, factor 2); never at the last epoch
        assert states == ["COMPLETE", "PRUNED", "COMPLETE", "PRUNED", "COMPLETE", "PRUNED"]
        assert pruned_at == [None, 1, None, 2, None, 1]
    else:
        # pruner.max_epochs plans every trial for 6 epochs, where it counts as COMPLETE
        assert all(n <= 6 for n, _, _, _ in outcomes["local"])
        assert all(t.user_attrs.get("epochs_planned") == 6 for t in trials)
        assert "COMPLETE" in states and "PRUNED" in states
