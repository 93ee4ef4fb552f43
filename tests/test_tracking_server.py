"""A real MLflow tracking server that goes down mid-study and comes back, reached through a
tracking URI whose password holds ``@``, ``:`` and ``%40``: the study's runs catch up with
it, and no secret is ever printed or written."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from drsearch.cli import cli
from tests.conftest import write_tiny_study

pytest.importorskip("mlflow")

LR_SPACE = "optim.lr: {type: float, low: 1.0e-3, high: 1.0e-2, log: true}\n"
#: MLflow's tracking server app (``mlflow.server.app``: the handlers ``mlflow server`` serves)
#: in its own process, on werkzeug rather than uvicorn (seconds rather than a minute to start)
SERVE = """
import os, sys
from werkzeug.serving import make_server
from mlflow.server import app

make_server("127.0.0.1", int(sys.argv[1]), app, threaded=True).serve_forever()
"""
SECRETS = ("SECRETA", "SECRETB", "SECRETC")


class Server:
    def __init__(self, folder: Path) -> None:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.folder = folder
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        env = os.environ | {
            "_MLFLOW_SERVER_FILE_STORE": f"sqlite:///{self.folder / 'server.db'}",
            "_MLFLOW_SERVER_SERVE_ARTIFACTS": "true",
            "_MLFLOW_SERVER_ARTIFACT_DESTINATION": str(self.folder / "artifacts"),
            "_MLFLOW_SERVER_ARTIFACT_ROOT": "mlflow-artifacts:/",
        }
        log = (self.folder / "server.log").open("ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-c", SERVE, str(self.port)], env=env, stdout=log, stderr=log
        )
        deadline = time.monotonic() + 180  # a bound on start-up, not a timing assumption
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, (self.folder / "server.log").read_text()[-2000:]
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/health", timeout=5):
                    return
            except OSError:
                time.sleep(0.2)
        raise AssertionError("the MLflow server did not answer /health")

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.kill()
        self.proc.wait()


@pytest.fixture
def server(tmp_path: Path) -> Iterator[Server]:
    folder = tmp_path / "mlflow-server"
    folder.mkdir()
    made = Server(folder)
    yield made
    if made.proc is not None and made.proc.poll() is None:
        made.kill()


@pytest.mark.e2e
def test_a_server_killed_mid_study_then_back_is_caught_up_and_no_secret_is_shown(
    tmp_path: Path,
    tiny_dataset: Path,
    server: Server,
    monkeypatch: pytest.MonkeyPatch,
    capfd: pytest.CaptureFixture[str],
) -> None:
    from mlflow.tracking import MlflowClient

    from drsearch.search.tracking import TrackedProgress

    server.start()
    uri = f"http://alice:Pw@SECRETA:SECRETB%40SECRETC@127.0.0.1:{server.port}"
    monkeypatch.setenv("DRSEARCH_MLFLOW_URI", uri)
    monkeypatch.delenv("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", raising=False)
    path = write_tiny_study(
        tmp_path,
        tiny_dataset,
        LR_SPACE,
        pruner={"enabled": False},
        recipe_overrides={"train.epochs": 2, "schedule.warmup_epochs": 0},
        budget={"n_trials": 3},
    )
    epoch = TrackedProgress.trial_epoch

    def on_epoch(self: Any, number: int, e: int, value: float) -> None:
        if (number, e) == (1, 1):  # the server dies under the study
            server.kill()
        epoch(self, number, e, value)

    monkeypatch.setattr(TrackedProgress, "trial_epoch", on_epoch)
    runner = CliRunner()
    first = runner.invoke(cli, ["run", str(path), "--quiet"])
    assert first.exit_code == 0, first.output
    assert "3 complete" in first.output
    assert f"MLflow tracking at http://alice:***@127.0.0.1:{server.port} failed" in first.output
    server.start()  # back, on the same port and store
    again = runner.invoke(cli, ["run", str(path), "--quiet"])  # the budget is spent: no trial
    assert again.exit_code == 0, again.output
    assert "runs brought in line with the study" in again.output

    import optuna

    study = optuna.load_study(study_name="tiny", storage=f"sqlite:///{tmp_path / 'runs/tiny.db'}")
    client = MlflowClient(tracking_uri=f"http://127.0.0.1:{server.port}")
    experiment = client.get_experiment_by_name("tiny")
    assert experiment is not None
    runs = client.search_runs([experiment.experiment_id])
    trials = {
        int(r.data.tags["drsearch.trial"]): r for r in runs if "drsearch.trial" in r.data.tags
    }
    (parent,) = [r for r in runs if r.data.tags.get("drsearch.kind") == "study"]
    assert parent.info.status == "FINISHED" and len(runs) == 4
    for t in study.get_trials():
        run = trials[t.number]
        assert (run.data.tags["drsearch.state"], run.info.status) == ("COMPLETE", "FINISHED")
        epochs = [m.step for m in client.get_metric_history(run.info.run_id, "epoch")]
        assert epochs == [1, 2]
        assert {a.path for a in client.list_artifacts(run.info.run_id)} >= {"metrics.jsonl"}

    exported = runner.invoke(
        cli, ["export", str(path), "--trial", "0", "-o", str(tmp_path / "r.yaml"), "--weights",
              str(tmp_path / "r.pt"), "--register", "dr-grader"],
    )  # fmt: skip
    assert exported.exit_code == 0, exported.output
    assert f"in http://alice:***@127.0.0.1:{server.port}" in exported.output
    captured = capfd.readouterr()
    written = [p for p in (tmp_path / "runs").rglob("*") if p.is_file()]
    text = "".join(
        [first.output, again.output, exported.output, captured.out, captured.err]
        + [p.read_text(errors="ignore") for p in [*written, tmp_path / "r.yaml"]]
    )
    assert "View run" not in text  # MLflow's own line, which carries the URL
    for secret in SECRETS:
        assert secret not in text
