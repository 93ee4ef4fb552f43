"""MLflow tracking of a study, through MLflow's own client on a real SQLite store."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from drsearch.cli import cli
from tests.conftest import write_tiny_study

pytest.importorskip("mlflow")

LR_SPACE = "optim.lr: {type: float, low: 1.0e-3, high: 1.0e-2, log: true}\n"


def _runs(uri: str, experiment: str) -> tuple[object, list, list]:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    exp = client.get_experiment_by_name(experiment)
    assert exp is not None
    runs = client.search_runs([exp.experiment_id], max_results=1000)
    studies = [r for r in runs if r.data.tags.get("drsearch.kind") == "study"]
    trials = [r for r in runs if r.data.tags.get("drsearch.kind") == "trial"]
    return client, studies, trials


@pytest.mark.e2e
def test_a_study_continued_has_one_mlflow_run_per_trial_with_its_epochs_and_state(
    tmp_path: Path, tiny_dataset: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("DRSEARCH_MLFLOW_URI", raising=False)
    path = write_tiny_study(
        tmp_path,
        tiny_dataset,
        LR_SPACE,
        pruner={"mode": "stopping", "grace_period": 1, "reduction_factor": 2},
        recipe_overrides={"train.epochs": 3, "schedule.warmup_epochs": 0},
        tracking={"mlflow": {}},  # the default: a SQLite store beside the study
        budget={"n_trials": 3},
    )
    runner = CliRunner()
    first = runner.invoke(cli, ["run", str(path), "--quiet"])
    assert first.exit_code == 0, first.output
    db = tmp_path / "runs" / "tiny-mlflow.db"
    uri = f"sqlite:///{db}"
    assert db.is_file()
    assert f"mlflow ui --backend-store-uri {uri}" in first.output
    more = runner.invoke(cli, ["run", str(path), "--quiet", "--n-trials", "4"])
    assert more.exit_code == 0, more.output

    import optuna

    study = optuna.load_study(
        study_name="tiny", storage=f"sqlite:///{tmp_path / 'runs' / 'tiny.db'}"
    )
    trials = {t.number: t for t in study.get_trials()}
    client, studies, runs = _runs(uri, "tiny")
    assert len(studies) == 1  # the continued study reused its parent run
    assert studies[0].info.status == "FINISHED"  # nothing runs: the study's run is ended
    by_number = {int(r.data.tags["drsearch.trial"]): r for r in runs}
    assert sorted(by_number) == sorted(trials) == [0, 1, 2, 3]
    assert len(runs) == 4  # one run per trial, never two
    for number, t in trials.items():
        run = by_number[number]
        assert run.data.tags["mlflow.parentRunId"] == studies[0].info.run_id
        assert run.data.tags["drsearch.state"] == t.state.name
        assert run.info.status == "FINISHED"  # complete and pruned trials ended as decided
        assert float(run.data.params["optim.lr"]) == pytest.approx(t.params["optim.lr"])
        epochs = [m.step for m in client.get_metric_history(run.info.run_id, "epoch")]
        assert epochs == sorted(t.intermediate_values)  # every epoch once, as trained
        (folder,) = (tmp_path / "runs" / "tiny").glob(f"*/{number:04d}")
        rows = [json.loads(x) for x in (folder / "metrics.jsonl").read_text().splitlines()]
        acc = client.get_metric_history(run.info.run_id, "val/accuracy")
        assert [m.value for m in acc] == pytest.approx([r["val"]["accuracy"] for r in rows])
        assert client.get_metric_history(run.info.run_id, "lr/backbone")
        assert client.get_metric_history(run.info.run_id, "val/sensitivity/grade4")
        assert len(client.get_metric_history(run.info.run_id, "objective")) == len(epochs)
        if t.state.name == "COMPLETE":
            assert run.data.metrics["value"] == pytest.approx(t.value)
            assert run.data.tags["drsearch.feasible"] == str(bool(t.user_attrs["feasible"]))
        if t.state.name == "PRUNED":
            assert run.data.metrics["pruned_at_epoch"] == t.user_attrs["pruned_at_epoch"]
        names = {a.path for a in client.list_artifacts(run.info.run_id)}
        assert {"config.yaml", "metrics.jsonl"} <= names
        artifacts = Path(client.download_artifacts(run.info.run_id, "config.yaml", str(tmp_path)))
        assert "optim" in artifacts.read_text()
    # the artifacts live under the run root, never in the working directory's mlruns/
    assert (tmp_path / "runs" / "tiny-mlflow-artifacts").is_dir()

    # the finalist stage on demand: its runs in the same store and experiment, under the
    # confirmation study's own parent run, each naming the finalist it retrains
    confirmed = runner.invoke(
        cli, ["confirm", str(path), "--top-k", "1", "--seeds", "2", "--executor", "local"]
    )
    assert confirmed.exit_code == 0, confirmed.output
    _, studies, runs = _runs(uri, "tiny")
    assert sorted(r.data.tags["mlflow.runName"] for r in studies) == ["tiny", "tiny-confirm"]
    confirm_runs = [r for r in runs if "drsearch.confirm_of" in r.data.tags]
    assert len(confirm_runs) == 2 and len(runs) == 6
    assert sorted(r.data.tags["drsearch.seed"] for r in confirm_runs) == ["4", "5"]  # seed 3 + i
    assert not (tmp_path / "runs" / "tiny-confirm-mlflow.db").exists()

    # a run and a finalist stage that have nothing left to do leave both study runs FINISHED
    assert runner.invoke(cli, ["run", str(path), "--quiet", "--n-trials", "4"]).exit_code == 0
    again = runner.invoke(
        cli, ["confirm", str(path), "--top-k", "1", "--seeds", "2", "--executor", "local"]
    )
    assert again.exit_code == 0, again.output
    _, studies, runs = _runs(uri, "tiny")
    assert [r.info.status for r in studies] == ["FINISHED", "FINISHED"] and len(runs) == 6
    assert all(r.info.status == "FINISHED" for r in runs)


def test_a_tracking_server_that_is_down_costs_a_warning_not_a_trial(
    tmp_path: Path, tiny_dataset: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # nothing listens there; the password (an @, a : and a %40 in it) must never be shown
    monkeypatch.setenv("DRSEARCH_MLFLOW_URI", "http://user:Pw@s3cret:SECRETB%40C@127.0.0.1:9")
    path = write_tiny_study(
        tmp_path,
        tiny_dataset,
        LR_SPACE,
        pruner={"enabled": False},
        recipe_overrides={"train.epochs": 1, "schedule.warmup_epochs": 0},
        budget={"n_trials": 1},
    )
    ran = CliRunner().invoke(cli, ["run", str(path), "--quiet"])
    assert ran.exit_code == 0, ran.output
    assert "1 complete" in ran.output
    assert "MLflow tracking at http://user:***@127.0.0.1:9 could not start" in ran.output
    assert "s3cret" not in ran.output and "SECRETB" not in ran.output


def _hooks(tmp_path: Path, tiny_dataset: Path, n: int) -> tuple[Any, Any, dict[int, Path]]:
    """A tiny study's store, its loaded file and ``n`` claimed trials, each with a run folder
    holding two epochs of ``metrics.jsonl`` (no training: the tracking hooks alone)."""
    from drsearch.config.study import load_study
    from drsearch.search.store import StudyStore

    path = write_tiny_study(
        tmp_path, tiny_dataset, LR_SPACE, tracking={"mlflow": {}}, budget={"n_trials": n}
    )
    loaded = load_study(path)
    store = StudyStore(loaded.config)
    folders = {}
    for n_ in range(n):
        trial = store.claim()
        assert trial is not None and trial.number == n_
        folder = folders[n_] = tmp_path / "runs" / f"{n_:04d}"
        folder.mkdir(parents=True)
        rows = [{"epoch": e, "val": {"accuracy": 0.1 * e + n_}, "lr": {"head": 1e-3}}
                for e in (1, 2)]  # fmt: skip
        (folder / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
        (folder / "config.yaml").write_text("optim: {lr: 0.001}\n")
    return loaded, store, folders


class Quiet:
    def trial_started(self, *a: object) -> None: ...
    def trial_epoch(self, *a: object) -> None: ...
    def trial_finished(self, *a: object) -> None: ...
    def trial_paused(self, *a: object) -> None: ...
    def warn(self, m: str) -> None: ...


def _trained(progress: Any, numbers: range) -> None:
    for n in numbers:
        progress.trial_started(n, {"optim.lr": 1e-3 * (n + 1)})
        progress.trial_epoch(n, 1, 0.5)
        progress.trial_epoch(n, 1, 0.5)  # told twice: logged once
        progress.trial_epoch(n, 2, 0.5)


def test_pruned_paused_and_interrupted_trials_are_marked_so(
    tmp_path: Path, tiny_dataset: Path
) -> None:
    """The tracking hooks on a real MLflow store and a real study: a pruned trial ends
    FINISHED with state PRUNED and the epoch it stopped at, a paused one is tagged PAUSED,
    a trial interrupted (its runner stopped) is ended KILLED when the run closes; its epochs
    are logged once each."""
    from drsearch.search.scheduler import RungScheduler
    from drsearch.search.tracking import TrackedProgress, open_tracking
    from drsearch.search.trial import End, Outcome

    loaded, store, folders = _hooks(tmp_path, tiny_dataset, 3)
    warnings: list[str] = []
    tracking = open_tracking(loaded, store, folders.__getitem__, warnings.append)
    assert tracking is not None
    progress = TrackedProgress(Quiet(), tracking)
    _trained(progress, range(3))
    trials = store.study.get_trials()
    pruned = Outcome(End.PRUNED, None, {"pruned_at_epoch": 2, "run_dir": str(folders[0])}, {})
    store.finish(trials[0]._trial_id, pruned, {1: 0.1, 2: 0.2})
    progress.trial_finished(0, pruned)
    paused = Outcome(End.PRUNED, None, {"pruned_at_epoch": 2, "run_dir": str(folders[1])}, {})
    RungScheduler(store, 2).pause(trials[1]._trial_id, 2, paused)
    progress.trial_paused(1, 2)
    assert store.interrupt_own() == [2]  # Ctrl-C: the running trial let go, FAIL interrupted
    tracking.close()
    assert warnings == []
    uri = f"sqlite:///{(tmp_path / 'runs' / 'tiny-mlflow.db').resolve()}"
    client, studies, runs = _runs(uri, "tiny")
    by = {int(r.data.tags["drsearch.trial"]): r for r in runs}
    assert len(studies) == 1 and sorted(by) == [0, 1, 2] and len(runs) == 3
    assert by[0].data.tags["drsearch.state"] == "PRUNED" and by[0].info.status == "FINISHED"
    assert by[0].data.metrics["pruned_at_epoch"] == 2
    assert by[1].data.tags["drsearch.state"] == "PAUSED" and by[1].info.status == "RUNNING"
    assert by[2].info.status == "KILLED" and by[2].data.tags["drsearch.state"] == "FAIL"
    assert studies[0].info.status == "RUNNING"  # trial 1 waits at its rung
    for n in range(3):
        history = client.get_metric_history(by[n].info.run_id, "val/accuracy")
        assert [(m.step, round(m.value, 6)) for m in history] == [(1, 0.1 + n), (2, 0.2 + n)]


def test_a_paused_trial_pruned_by_a_runner_that_never_ran_it_is_found_by_its_tags(
    tmp_path: Path, tiny_dataset: Path
) -> None:
    """Runner A pauses trial 0 at its rung; runner B (its own tracking, nothing in memory
    about trial 0) prunes it when nothing runs: B ends A's run, by its tags, with no error
    and no second run."""
    from drsearch.search.scheduler import RungScheduler
    from drsearch.search.tracking import TrackedProgress, open_tracking
    from drsearch.search.trial import End, Outcome

    loaded, store, folders = _hooks(tmp_path, tiny_dataset, 1)
    said: list[str] = []
    a = TrackedProgress(Quiet(), open_tracking(loaded, store, folders.__getitem__, said.append))
    a.trial_started(0, {"optim.lr": 1e-3})
    a.trial_epoch(0, 1, 0.5)  # epoch 2 is in the file but not yet logged when it pauses
    paused = Outcome(End.PRUNED, None, {"pruned_at_epoch": 2, "run_dir": str(folders[0])}, {})
    RungScheduler(store, 2).pause(store.study.trials[0]._trial_id, 2, paused)
    b = TrackedProgress(Quiet(), open_tracking(loaded, store, folders.__getitem__, said.append))
    ((number, outcome),) = RungScheduler(store, 2).prune_paused(wait=False) or []
    b.trial_finished(number, outcome)
    assert said == []
    uri = f"sqlite:///{(tmp_path / 'runs' / 'tiny-mlflow.db').resolve()}"
    client, _, runs = _runs(uri, "tiny")
    (run,) = runs
    assert run.data.tags["drsearch.state"] == "PRUNED" and run.info.status == "FINISHED"
    assert run.data.metrics["pruned_at_epoch"] == 2
    assert [m.step for m in client.get_metric_history(run.info.run_id, "epoch")] == [1, 2]


@pytest.mark.e2e
def test_a_wandb_offline_study_writes_one_run_per_trial_with_its_epochs(
    tmp_path: Path, tiny_dataset: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pytest.importorskip("wandb")
    monkeypatch.delenv("DRSEARCH_MLFLOW_URI", raising=False)
    monkeypatch.setenv("WANDB_SILENT", "true")
    path = write_tiny_study(
        tmp_path,
        tiny_dataset,
        LR_SPACE,
        pruner={"enabled": False},
        recipe_overrides={"train.epochs": 2, "schedule.warmup_epochs": 0},
        tracking={"wandb": {"project": "dr-tiny"}},  # offline: no network
        budget={"n_trials": 2},
    )
    ran = CliRunner().invoke(cli, ["run", str(path), "--quiet"])
    assert ran.exit_code == 0, ran.output
    said = [ln for ln in ran.output.splitlines() if "Warning" in ln and "low power: " not in ln]
    assert not said, said  # the tiny set's 4 PDR images: low power, said; nothing else
    folder = tmp_path / "runs" / "tiny-wandb"
    assert f"wandb sync {folder / 'wandb'}/offline-run-*" in ran.output
    assert "mlflow ui" not in ran.output  # only what the study tracks in
    import optuna

    study = optuna.load_study(study_name="tiny", storage=f"sqlite:///{tmp_path / 'runs/tiny.db'}")
    for t in study.get_trials():
        (run,) = (folder / "wandb").glob(f"offline-run-*-trial{t.number}")
        (log,) = run.glob("*.wandb")
        data = log.read_bytes()
        assert b"val/accuracy" in data and b"lr/backbone" in data and b"objective" in data
        (record,) = (folder / "drsearch").glob(f"*-{t.number}.json")  # study uuid-number
        ledger = json.loads(record.read_text())
        assert ledger["epoch"] == max(t.intermediate_values) == 2  # each epoch, once
        assert ledger["state"] == t.state.name == "COMPLETE" and ledger["status"] == "FINISHED"
    assert not (tmp_path / "wandb").exists()  # under the run root, not beside the study


@pytest.mark.e2e
def test_ctrl_c_then_retry_leaves_one_mlflow_run_per_trial_and_the_cut_one_killed(
    tmp_path: Path, tiny_dataset: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Ctrl-C during a trial (SIGINT at an exact moment, after its second epoch is recorded:
    no polling of a database the run is still creating): its run ends KILLED (state FAIL) as
    the runner lets it go; the continued study re-runs it as a new trial with its own run
    (tagged with the trial it retries), epochs continued from the checkpoint and logged once."""
    import os
    import signal
    import subprocess
    import sys

    import optuna

    monkeypatch.delenv("DRSEARCH_MLFLOW_URI", raising=False)
    path = write_tiny_study(
        tmp_path,
        tiny_dataset,
        LR_SPACE,
        budget={"n_trials": 2},
        pruner={"enabled": False},
        recipe_overrides={"train.epochs": 6},
        tracking={"mlflow": {}},
    )
    proc = subprocess.run(
        [sys.executable, "-m", "drsearch.cli", "run", path.name, "--quiet"],
        capture_output=True, text=True, cwd=tmp_path, timeout=600,
        env={**os.environ, "DRSEARCH_FAULT": "after_record:2:INT"},
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )  # fmt: skip
    err = proc.stderr
    assert proc.returncode == 130, err[-2000:]
    url = f"sqlite:///{tmp_path / 'runs' / 'tiny.db'}"
    running = [0]  # the first trial, cut after its second epoch
    uri = f"sqlite:///{tmp_path / 'runs' / 'tiny-mlflow.db'}"
    client, _, runs = _runs(uri, "tiny")
    cut = {int(r.data.tags["drsearch.trial"]): r for r in runs}[running[0]]
    assert cut.info.status == "KILLED" and cut.data.tags["drsearch.state"] == "FAIL", err[-3000:]

    again = CliRunner().invoke(cli, ["run", str(path), "--quiet"])  # it runs again by itself
    assert again.exit_code == 0, again.output
    study = optuna.load_study(study_name="tiny", storage=url)
    client, studies, runs = _runs(uri, "tiny")
    by = {int(r.data.tags["drsearch.trial"]): r for r in runs}
    assert len(studies) == 1 and sorted(by) == [t.number for t in study.trials]  # one each
    retry = next(t for t in study.trials if t.user_attrs.get("retry_of") == running[0])
    assert by[retry.number].data.tags["drsearch.retry_of"] == str(running[0])
    assert by[retry.number].info.status == "FINISHED"
    steps = [m.step for m in client.get_metric_history(by[retry.number].info.run_id, "epoch")]
    assert steps == sorted(set(steps)) and steps[-1] == 6  # each epoch once, to the end
