"""optuna-dashboard on a real study: its HTTP API lists the study, attributes and artifacts."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from click.testing import CliRunner

from drsearch.cli import cli
from tests.conftest import write_tiny_study

pytestmark = pytest.mark.e2e


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def get(url: str, **headers: str) -> tuple[int, bytes]:
    request = urllib.request.Request(url, headers=headers)
    with urllib.request.urlopen(request, timeout=30) as response:  # noqa: S310 - loopback
        return response.status, response.read()


def test_dashboard_serves_study_attributes_notes_and_artifacts(
    tmp_path: Path, tiny_dataset: Path
) -> None:
    path = write_tiny_study(
        tmp_path,
        tiny_dataset,
        "optim.lr: {type: float, low: 1.0e-4, high: 1.0e-2, log: true}\n",
        recipe_overrides={"train.epochs": 2},
        pruner={"enabled": False},
    )
    assert CliRunner().invoke(cli, ["run", str(path), "--quiet"]).exit_code == 0
    port = free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "drsearch.cli", "dashboard", str(path), "--port", str(port)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 60
        while True:
            try:
                get(f"{base}/api/meta")
                break
            except OSError:
                assert time.time() < deadline and server.poll() is None, "dashboard did not start"
                time.sleep(0.3)
        _, body = get(f"{base}/api/studies")
        studies = json.loads(body)["study_summaries"]
        (summary,) = [s for s in studies if s["study_name"] == "tiny"]
        _, body = get(f"{base}/api/studies/{summary['study_id']}")
        detail = json.loads(body)
        assert "## tiny" in detail["note"]["body"] and "**Search space**" in detail["note"]["body"]
        trial = detail["trials"][0]
        attrs = {a["key"]: a["value"] for a in trial["user_attrs"]}
        assert {"accuracy", "sensitivity", "sensitivity_pdr", "lr_groups", "run_dir"} <= set(attrs)
        assert trial["constraints"]  # the legacy form the 0.21 UI shows
        assert "| grade | sensitivity |" in trial["note"]["body"]
        names = {a["filename"] for a in trial["artifacts"]}
        assert names == {
            "predictions.csv",
            "metrics.jsonl",
            "config.yaml",
            "confusion_matrix.csv",
            "lr_trace.csv",
        }
        lr_trace = next(a for a in trial["artifacts"] if a["filename"] == "lr_trace.csv")
        status, content = get(
            f"{base}/artifacts/{summary['study_id']}/{trial['trial_id']}/{lr_trace['artifact_id']}"
        )
        assert status == 200 and content.decode().startswith("epoch,step_of_epoch,group,lr")
        status, bundle = get(f"{base}/static/bundle.js", **{"Accept-Encoding": "gzip"})
        assert status == 200 and len(bundle) > 10_000
    finally:
        server.terminate()
        output = server.communicate(timeout=30)[0]
    assert f"at http://127.0.0.1:{port}/dashboard/" in output
    assert "GET /api" not in output and "Bottle" not in output  # quiet unless --verbose
    assert (
        "| constraint | required | observed (images) | 90% lower bound | met |"
        in trial["note"]["body"]
    )


def test_the_study_note_never_states_a_searched_value_as_fixed(
    tmp_path: Path, tiny_dataset: Path
) -> None:
    from drsearch.config.study import load_study
    from drsearch.search.annotations import study_note

    space = (
        "optim.lr: {type: float, low: 1.0e-3, high: 1.0e-2, log: true}\n"
        "train.batch_size: {type: categorical, choices: [8, 16]}\n"
    )
    note = study_note(load_study(write_tiny_study(tmp_path, tiny_dataset, space)))
    assert "batch searched (below)" in note and "- `train.batch_size`" in note
    assert "epochs, batch 8" not in note and "epochs, batch 16" not in note
    (tmp_path / "b").mkdir()
    lr_only = "optim.lr: {type: float, low: 1.0e-3, high: 1.0e-2, log: true}\n"
    fixed = study_note(load_study(write_tiny_study(tmp_path / "b", tiny_dataset, lr_only)))
    assert "searched (below)" not in fixed and "epochs, batch " in fixed
