"""Studies end to end: both executors, pruning, failures, and a re-run after kill -9."""

from __future__ import annotations

import time
from pathlib import Path

import optuna
import pytest
from click.testing import CliRunner
from optuna.trial import TrialState

from drsearch.cli import cli
from drsearch.config.study import load_study
from drsearch.search.database import make_storage
from drsearch.search.runners import run_study
from drsearch.search.runners.common import SilentProgress
from drsearch.search.store import named_constraints
from tests.conftest import write_tiny_study

pytestmark = pytest.mark.e2e

LR_SPACE = "optim.lr: {type: float, low: 1.0e-8, high: 1.0e-2, log: true}\n"
MODEL_SPACE = "model.name: {type: categorical, choices: [resnet10t, no_such_model]}\n"
VOLATILE = {"run_dir", "wall_seconds", "train_seconds", "executor", "ray_trial_id", "ray_node_id"}


def trials(path: Path) -> list[optuna.trial.FrozenTrial]:
    loaded = load_study(path)
    study = optuna.load_study(study_name=loaded.config.name, storage=loaded.config.storage_url())
    return study.get_trials()


def enqueue(path: Path, *params: dict) -> None:
    loaded = load_study(path)
    study = optuna.create_study(
        study_name=loaded.config.name,
        direction="maximize",
        storage=make_storage(loaded.config.storage_url()),
        load_if_exists=True,
    )
    for p in params:
        study.enqueue_trial(p)


def check_records(t: optuna.trial.FrozenTrial, max_epochs: int) -> None:
    """What every finished trial must carry, whatever its state."""
    attrs = t.user_attrs
    if t.state == TrialState.FAIL:
        assert attrs["fail_reason"]
        return
    for key in (
        "accuracy",
        "qwk",
        "sensitivity",
        "specificity",
        "sensitivity_severe_npdr",
        "sensitivity_pdr",
        "confusion_matrix",
        "epochs_completed",
        "wall_seconds",
        "run_dir",
        "lr_groups",
    ):
        assert key in attrs, key
    assert len(attrs["sensitivity"]) == 5 and len(attrs["confusion_matrix"]) == 5
    assert set(attrs["lr_groups"]) == {"backbone", "head"}
    epochs = attrs["epochs_completed"]
    assert sorted(t.intermediate_values) == list(range(1, epochs + 1))  # last one included
    assert (Path(attrs["run_dir"]) / "metrics.jsonl").is_file()
    if t.state == TrialState.PRUNED:
        assert attrs["pruned_at_epoch"] == epochs < max_epochs
    else:
        assert epochs == max_epochs
    # each constraint once where a sampler reads it (the list optuna-dashboard 0.21 reads
    # too), its name beside it
    named = named_constraints(t)
    # the tiny study's one constraint, and the bar of the trivial model
    assert sorted(named) == ["accuracy>trivial", "sensitivity_pdr>=0.5"]
    assert sorted(t.constraints.values()) == sorted(named.values())
    assert len(t.constraints) == 2
    short = attrs["constraint_shortfalls"]["sensitivity_pdr>=0.5"]  # in standard errors
    assert (short > 0) == (named["sensitivity_pdr>=0.5"] > 0)
    assert attrs["feasible"] == all(v <= 0 for v in named.values())


def test_ray_executor_prunes_with_asha_and_records_the_last_epoch(
    tmp_path: Path, tiny_dataset: Path, ray_cluster: None
) -> None:
    # referable AUC is continuous, so trials differ even when accuracies tie on tiny data
    path = write_tiny_study(
        tmp_path,
        tiny_dataset,
        LR_SPACE,
        executor="ray",
        budget={"n_trials": 6},
        pruner={"metric": "referable_auc", "grace_period": 1, "reduction_factor": 2},
    )
    summary = run_study(load_study(path))
    got = trials(path)
    assert len(got) == 6 and summary.counts.counted == 6
    states = {t.state for t in got}
    assert TrialState.PRUNED in states and TrialState.COMPLETE in states
    for t in got:
        check_records(t, max_epochs=3)
        assert t.user_attrs["executor"] == "ray" and t.user_attrs["ray_trial_id"]


def test_a_trial_ray_cannot_place_on_a_cluster_is_explained_not_waited_on(
    tmp_path: Path, tiny_dataset: Path, ray_cluster: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """On a cluster (ray.address: placement is Ray's to judge), a trial asking for a GPU no
    node has stays PENDING: after ray.pending_timeout_s with nothing running the run stops
    with one line saying what was asked and what the cluster has, and lets its trial go."""
    path = write_tiny_study(
        tmp_path, tiny_dataset, LR_SPACE, executor="ray",
        ray={"address": "127.0.0.1:6379", "pending_timeout_s": 3},
        resources={"cpus_per_trial": 1, "gpus_per_trial": 1, "max_concurrent": 1},
    )  # fmt: skip
    started = time.monotonic()
    result = CliRunner().invoke(cli, ["run", str(path), "--quiet"])
    assert result.exit_code == 2, result.output
    assert time.monotonic() - started < 60
    (line,) = [x for x in result.output.splitlines() if x.startswith("Error:")]
    assert "Ray kept a trial PENDING for 3 s with no trial running" in line
    assert "each trial asks 1 CPUs and 1 GPUs" in line and ", 0 GPUs in all" in line
    assert "Traceback" not in result.output
    # the trial it claimed is let go (interrupted: not counted), never left RUNNING
    assert [t.state for t in trials(path)] == [TrialState.FAIL]
    assert "interrupted" in trials(path)[0].user_attrs.get("fail_reason", "")


def test_failing_trial_does_not_stop_the_study(
    tmp_path: Path, tiny_dataset: Path, ray_cluster: None
) -> None:
    path = write_tiny_study(tmp_path, tiny_dataset, MODEL_SPACE, executor="ray")
    enqueue(path, {"model.name": "no_such_model"}, {"model.name": "resnet10t"})
    summary = run_study(load_study(path))
    first, second = trials(path)
    assert first.state == TrialState.FAIL
    assert "model.name: unknown timm model 'no_such_model'" in first.user_attrs["fail_reason"]
    assert second.state == TrialState.COMPLETE
    assert summary.counts.failed == 1 and summary.counts.complete == 1


def test_every_trial_failing_exits_non_zero(tmp_path: Path, tiny_dataset: Path) -> None:
    path = write_tiny_study(
        tmp_path, tiny_dataset, "model.name: {type: categorical, choices: [no_such_model]}\n"
    )
    result = CliRunner().invoke(cli, ["run", str(path), "--quiet"])
    assert result.exit_code == 1
    assert "every trial failed; first: trial 0: model.name: unknown timm model" in result.output


def test_both_executors_give_the_same_trial_records(
    tmp_path: Path, tiny_dataset: Path, ray_cluster: None
) -> None:
    space = LR_SPACE + "loss.name: {type: categorical, choices: [ce, focal]}\n"
    records = {}
    for executor in ("local", "ray"):
        folder = tmp_path / executor
        folder.mkdir()
        path = write_tiny_study(
            folder,
            tiny_dataset,
            space,
            executor=executor,
            pruner={"enabled": False},
            recipe_overrides={"train.epochs": 2},
        )
        run_study(load_study(path))
        records[executor] = [
            (
                t.number,
                t.state,
                t.params,
                t.value,
                t.intermediate_values,
                {k: v for k, v in t.user_attrs.items() if k not in VOLATILE},
                t.constraints,
            )
            for t in trials(path)
        ]
    assert records["local"] == records["ray"]
    assert len(records["local"]) == 2


def test_cli_run_prints_a_summary_and_continues_to_a_larger_budget(
    tmp_path: Path, tiny_dataset: Path
) -> None:
    path = write_tiny_study(
        tmp_path,
        tiny_dataset,
        LR_SPACE,
        recipe_overrides={"train.epochs": 2},
        pruner={"enabled": False},
    )
    runner = CliRunner()
    first = runner.invoke(cli, ["run", str(path), "--quiet", "--executor", "local"])
    assert first.exit_code == 0, first.output
    assert "study tiny (sqlite:///" in first.output
    assert "2/2 trials counted - 2 complete, 0 pruned, 0 failed" in first.output
    named = "search best (feasible): trial" in first.output
    assert named or "no trial is feasible (no winner); the closest: trial" in first.output
    assert named or "  not feasible: " in first.output  # the closest says why it is not a winner
    assert "optim.lr=" in first.output
    more = runner.invoke(cli, ["run", str(path), "--quiet", "--n-trials", "3"])
    assert more.exit_code == 0, more.output
    assert "3/3 trials counted" in more.output and "this run: 1 trial(s)" in more.output
    assert [t.number for t in trials(path)] == [0, 1, 2]


def test_nan_loss_fails_the_trial_with_its_reason_and_the_study_goes_on(
    tmp_path: Path, tiny_dataset: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import torch

    from drsearch.train.loss import SoftTargetLoss

    original = SoftTargetLoss.forward

    def nan_for_focal(self, logits, targets):  # type: ignore[no-untyped-def]
        loss = original(self, logits, targets)
        return loss * torch.nan if self.focal else loss

    monkeypatch.setattr(SoftTargetLoss, "forward", nan_for_focal)
    path = write_tiny_study(
        tmp_path,
        tiny_dataset,
        "loss.name: {type: categorical, choices: [ce, focal]}\n",
        recipe_overrides={"train.epochs": 2},
    )
    enqueue(path, {"loss.name": "focal"}, {"loss.name": "ce"})
    summary = run_study(load_study(path))
    first, second = trials(path)
    assert first.state == TrialState.FAIL
    assert first.user_attrs["fail_reason"].startswith("training loss became nan at epoch 1")
    assert second.state == TrialState.COMPLETE
    assert summary.counts.counted == 2 and summary.first_failure.startswith("trial 0: ")


def test_time_limit_stops_starting_new_trials(
    tmp_path: Path, tiny_dataset: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No new trial starts once the limit has passed (a fake clock: each trial 'takes' 10 s,
    so the result does not depend on how fast this machine is)."""
    import drsearch.search.deadline as deadline
    import drsearch.search.runners as runners
    import drsearch.search.runners.local as local

    now = [1000.0]

    class Clock:
        @staticmethod
        def time() -> float:
            return now[0]

    class TenSecondTrials(SilentProgress):
        def trial_finished(self, number: int, outcome: object) -> None:
            now[0] += 10.0

    monkeypatch.setattr(runners, "time", Clock)
    monkeypatch.setattr(local, "time", Clock)
    monkeypatch.setattr(deadline, "time", Clock)  # the limit counts from the first trial
    path = write_tiny_study(
        tmp_path,
        tiny_dataset,
        LR_SPACE,
        budget={"n_trials": 5, "time_limit_s": 25.0},
        recipe_overrides={"train.epochs": 1, "schedule.warmup_epochs": 0},
    )
    summary = run_study(load_study(path), TenSecondTrials())
    assert summary.started_trials == 3  # started at 0, 10 and 20 s; none at 30 s
    assert summary.deadline is not None and summary.deadline.reached_at == 1030.0
    assert summary.counts.counted == 3 and summary.n_trials == 5


def test_trials_of_a_study_share_one_decoded_image_cache(
    tmp_path: Path, tiny_dataset: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import json

    from drsearch.data import cache as cache_module

    cache_root = tmp_path / "cache"
    monkeypatch.setenv("DRSEARCH_CACHE", str(cache_root))
    decoded: list[int] = []
    real = cache_module._decode_all

    def counting(records, *args, **kwargs):  # type: ignore[no-untyped-def]
        decoded.append(len(records))
        return real(records, *args, **kwargs)

    monkeypatch.setattr(cache_module, "_decode_all", counting)
    path = write_tiny_study(tmp_path, tiny_dataset, LR_SPACE, budget={"n_trials": 3})
    run_study(load_study(path))
    runs = [
        json.loads((Path(t.user_attrs["run_dir"]) / "run.json").read_text()) for t in trials(path)
    ]
    locations = {r["image_cache"] for r in runs}
    assert len(locations) == 1 and locations.pop().startswith(str(cache_root))
    assert decoded == [80]  # the first trial decoded the 80 images; the others mapped them
