"""Tracking that heals: a tracking store that fails, goes down, or is killed mid-write is
caught up from the study (the truth) at the next chance, and every run ends as its trial
did. Faults are injected into MLflow's own client on a real SQLite store (deterministic:
switched on and off by the search's own hooks); ``test_tracking_server.py`` does the same
against a real MLflow server that goes down and comes back."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from drsearch.cli import cli
from tests.conftest import write_tiny_study

pytest.importorskip("mlflow")

LR_SPACE = "optim.lr: {type: float, low: 1.0e-3, high: 1.0e-2, log: true}\n"
#: Every call drsearch makes on MLflow's client.
CALLS = (
    "search_runs", "create_run", "log_batch", "set_tag", "update_run", "set_terminated",
    "get_run", "get_metric_history", "log_artifact", "get_experiment_by_name",
    "create_experiment",
)  # fmt: skip


class Outage:
    """MLflow's client failing like a store that is down, while ``down`` (or for the next
    ``fail_next`` calls only)."""

    def __init__(self) -> None:
        self.down = False
        self.fail_next = 0
        self.failed = 0


@pytest.fixture
def outage(monkeypatch: pytest.MonkeyPatch) -> Iterator[Outage]:
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    from drsearch.search.tracking import coordinator

    monkeypatch.setattr(coordinator, "RETRY_S", 0.5)  # a few short retries, not seconds
    state = Outage()

    def failing(original: Any) -> Any:
        def call(self: Any, *args: Any, **kwargs: Any) -> Any:
            if state.down or state.fail_next > 0:
                state.fail_next = max(0, state.fail_next - 1)
                state.failed += 1
                raise MlflowException("API request failed: Connection refused")
            return original(self, *args, **kwargs)

        return call

    for name in CALLS:
        monkeypatch.setattr(MlflowClient, name, failing(getattr(MlflowClient, name)))
    yield state


def _study(tmp_path: Path, tiny_dataset: Path, **study: Any) -> Path:
    return write_tiny_study(
        tmp_path,
        tiny_dataset,
        LR_SPACE,
        pruner={"enabled": False},
        recipe_overrides={"train.epochs": 2, "schedule.warmup_epochs": 0},
        tracking={"mlflow": {}},
        **({"budget": {"n_trials": 3}} | study),
    )


def agree(tmp_path: Path, name: str = "tiny") -> dict[int, Any]:
    """Assert that every trial's MLflow run says what the Optuna study says (state, status,
    each epoch once) and that the study's run is FINISHED; the runs by trial number."""
    import optuna
    from mlflow.tracking import MlflowClient

    study = optuna.load_study(study_name=name, storage=f"sqlite:///{tmp_path / 'runs/tiny.db'}")
    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'runs' / 'tiny-mlflow.db'}")
    experiment = client.get_experiment_by_name("tiny")
    assert experiment is not None
    runs = client.search_runs([experiment.experiment_id], "tags.`drsearch.kind` = 'trial'")
    by = {int(r.data.tags["drsearch.trial"]): r for r in runs}
    assert len(by) == len(runs)  # one run per trial
    trials = {t.number: t for t in study.get_trials() if t.state.name != "WAITING"}
    assert sorted(by) == sorted(trials)
    status = {"COMPLETE": "FINISHED", "PRUNED": "FINISHED", "FAIL": "FAILED"}
    for number, t in trials.items():
        run = by[number]
        interrupted = t.user_attrs.get("fail_reason") == "interrupted"
        assert run.data.tags["drsearch.state"] == t.state.name, number
        assert run.info.status == ("KILLED" if interrupted else status[t.state.name]), number
        epochs = [m.step for m in client.get_metric_history(run.info.run_id, "epoch")]
        assert epochs == sorted(t.intermediate_values), number  # each epoch once
    (parent,) = client.search_runs([experiment.experiment_id], "tags.`drsearch.kind` = 'study'")
    assert parent.info.status == "FINISHED"
    return by


def test_the_ledger_keeps_owed_what_fell_behind_after_the_reconcile_that_paid(
    tmp_path: Path,
) -> None:
    from drsearch.search.tracking.ledger import Ledger

    ledger = Ledger(tmp_path / "runs" / "tiny-tracking-ledger.jsonl")
    assert ledger.owed("MLflow") is None and ledger.mark() == 0
    ledger.owe("MLflow", "down")
    mark = ledger.mark()  # a reconcile starts...
    ledger.owe("MLflow", "down again")  # ...another runner falls behind meanwhile...
    ledger.paid("MLflow", mark)  # ...and the reconcile succeeds: it paid for the first only
    assert (ledger.owed("MLflow") or {})["error"] == "down again"
    ledger.paid("MLflow", ledger.mark())
    assert ledger.owed("MLflow") is None
    lines = ledger.path.read_text().splitlines()
    with ledger.path.open("a") as fh:
        fh.write('{"owed": "W&')  # an append cut short by a kill
    ledger.owe("W&B", "disk full")
    assert (ledger.owed("W&B") or {})["error"] == "disk full" and ledger.owed("MLflow") is None
    assert ledger.path.read_text().splitlines()[: len(lines)] == lines


def test_a_failed_write_is_retried_and_a_store_down_is_caught_up_at_the_next_epoch(
    tmp_path: Path, tiny_dataset: Path, outage: Outage, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The tracking hooks alone on a real study and store: one failed call is retried (no
    warning, nothing lost); a store down for two epochs costs one warning, and the first
    epoch after it comes back logs what was missed (catch-ups due at once here)."""
    from drsearch.search.tracking import TrackedProgress, coordinator, open_tracking
    from tests.test_tracking import Quiet, _hooks, _runs

    monkeypatch.setattr(coordinator, "CATCH_UP_S", (0.0, 0.0))
    loaded, store, folders = _hooks(tmp_path, tiny_dataset, 2)
    said: list[str] = []
    progress = TrackedProgress(
        Quiet(), open_tracking(loaded, store, folders.__getitem__, said.append)
    )
    outage.fail_next = 1
    progress.trial_started(0, {"optim.lr": 1e-3})
    progress.trial_epoch(0, 1, 0.5)
    assert outage.failed == 1 and said == []  # retried
    outage.down = True
    progress.trial_epoch(0, 2, 0.5)
    progress.trial_started(1, {"optim.lr": 2e-3})
    assert len(said) == 1 and "the study goes on" in said[0]
    ledger = tmp_path / "runs" / "tiny-tracking-ledger.jsonl"
    assert [json.loads(x)["owed"] for x in ledger.read_text().splitlines()] == ["MLflow"]
    outage.down = False
    progress.trial_epoch(1, 1, 0.5)  # the next chance: trial 0's epoch 2 and trial 1's run
    assert len(said) == 2 and "answers again" in said[1]
    client, _, runs = _runs(f"sqlite:///{tmp_path / 'runs' / 'tiny-mlflow.db'}", "tiny")
    by = {int(r.data.tags["drsearch.trial"]): r for r in runs}
    assert sorted(by) == [0, 1] and all(r.info.status == "RUNNING" for r in runs)
    for number, epochs in ((0, [1, 2]), (1, [1, 2])):
        history = client.get_metric_history(by[number].info.run_id, "epoch")
        assert [m.step for m in history] == epochs
    assert '"paid": "MLflow"' in ledger.read_text().splitlines()[-1]


@pytest.mark.e2e
def test_a_store_down_mid_study_is_caught_up_and_every_run_ends_as_its_trial(
    tmp_path: Path, tiny_dataset: Path, outage: Outage, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The store goes down at trial 0's first epoch and comes back when trial 2 starts
    (switched by the search's own hooks): one warning, the study trains on, and when the
    run ends every trial's run (trial 1 trained while the store was down) says what the
    study says, each epoch once."""
    from drsearch.search.tracking import TrackedProgress

    monkeypatch.delenv("DRSEARCH_MLFLOW_URI", raising=False)
    epoch, started = TrackedProgress.trial_epoch, TrackedProgress.trial_started

    def on_epoch(self: Any, number: int, e: int, value: float) -> None:
        outage.down = outage.down or (number, e) == (0, 1)
        epoch(self, number, e, value)

    def on_start(self: Any, number: int, params: dict[str, Any]) -> None:
        outage.down = outage.down and number != 2
        started(self, number, params)

    monkeypatch.setattr(TrackedProgress, "trial_epoch", on_epoch)
    monkeypatch.setattr(TrackedProgress, "trial_started", on_start)
    path = _study(tmp_path, tiny_dataset)
    ran = CliRunner().invoke(cli, ["run", str(path), "--quiet"])
    assert ran.exit_code == 0, ran.output
    assert "3 complete" in ran.output and outage.failed > 0
    assert ran.output.count("the study goes on, and its runs catch up") == 1
    agree(tmp_path)


@pytest.mark.e2e
def test_a_store_down_for_a_whole_run_is_caught_up_by_report_and_sync(
    tmp_path: Path, tiny_dataset: Path, outage: Outage, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A store down from start to end: the study runs untracked with a warning and the
    ledger keeps it owed; ``drsearch report`` catches every run up once the store answers;
    ``drsearch sync`` then has nothing to fix, and a no-op run leaves every run FINISHED."""
    monkeypatch.delenv("DRSEARCH_MLFLOW_URI", raising=False)
    path = _study(tmp_path, tiny_dataset, budget={"n_trials": 2})
    runner = CliRunner()
    outage.down = True
    ran = runner.invoke(cli, ["run", str(path), "--quiet"])
    assert ran.exit_code == 0, ran.output
    assert "2 complete" in ran.output and "could not start" in ran.output
    assert f"drsearch sync {path}" in ran.output and "still behind" in ran.output
    ledger = tmp_path / "runs" / "tiny-tracking-ledger.jsonl"
    assert json.loads(ledger.read_text().splitlines()[0])["owed"] == "MLflow"
    behind = runner.invoke(cli, ["sync", str(path)])
    assert behind.exit_code == 1 and "still behind the study" in behind.output
    outage.down = False
    report = runner.invoke(cli, ["report", str(path), "--out", str(tmp_path / "rep")])
    assert report.exit_code == 0, report.output
    assert "runs brought in line with the study: 2 fixed" in report.output
    agree(tmp_path)
    synced = runner.invoke(cli, ["sync", str(path)])
    assert synced.exit_code == 0, synced.output
    assert "tiny: MLflow at sqlite:///" in synced.output and "nothing to fix" in synced.output
    again = runner.invoke(cli, ["run", str(path), "--quiet"])  # the budget is spent
    assert again.exit_code == 0 and "Warning" not in again.output, again.output
    agree(tmp_path)


KILLER = """
import os, signal, sys
from mlflow.tracking import MlflowClient

METHOD, TRIAL = sys.argv[1], sys.argv[2]
original = getattr(MlflowClient, METHOD)


def killed(self, *args, **kwargs):
    # SIGKILL inside the client call that writes trial TRIAL's run
    if METHOD == "create_run":
        hit = kwargs.get("tags", {}).get("drsearch.trial") == TRIAL
    else:
        hit = self.get_run(args[0]).data.tags.get("drsearch.trial") == TRIAL
    if hit:
        os.kill(os.getpid(), signal.SIGKILL)
    return original(self, *args, **kwargs)


setattr(MlflowClient, METHOD, killed)
from drsearch.cli import main

sys.argv = ["drsearch", "run", sys.argv[3], "--quiet"]
main()
"""


@pytest.mark.e2e
@pytest.mark.parametrize(
    ("method", "trial"),
    [
        ("set_terminated", "0"),  # trial 0 complete in the study, its run's end half written
        ("create_run", "1"),  # trial 1 claimed, no run made yet
    ],
)
def test_a_runner_killed_inside_an_mlflow_call_then_continued_agrees_with_the_study(
    tmp_path: Path, tiny_dataset: Path, monkeypatch: pytest.MonkeyPatch, method: str, trial: str
) -> None:
    monkeypatch.delenv("DRSEARCH_MLFLOW_URI", raising=False)
    path = _study(tmp_path, tiny_dataset, budget={"n_trials": 2})
    script = tmp_path / "killer.py"
    script.write_text(textwrap.dedent(KILLER))
    killed = subprocess.run(
        [sys.executable, str(script), method, trial, str(path)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    again = CliRunner().invoke(cli, ["run", str(path), "--quiet"])  # the continuation
    assert again.exit_code == 0, again.output
    by = agree(tmp_path)
    if method == "create_run":  # the killed runner's trial: reaped, its run made and KILLED
        assert by[1].info.status == "KILLED"
