"""The command line as a user meets it: exit codes, output, files; and kill -9 then --resume."""

from __future__ import annotations

import csv
import io
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from drsearch.cli import cli
from tests.conftest import tiny_recipe_dict


@pytest.fixture
def runner() -> CliRunner:
    return CliRunner()


def write_recipe(tmp_path: Path, root: Path, **overrides: object) -> Path:
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(tiny_recipe_dict(root, **overrides)))
    return path


def test_data_synth(runner: CliRunner, tmp_path: Path) -> None:
    result = runner.invoke(
        cli,
        [
            "data",
            "synth",
            "--out",
            str(tmp_path / "s"),
            "--n",
            "40",
            "--size",
            "48",
            "--imbalance",
            "eyepacs",
        ],
    )
    assert result.exit_code == 0, result.output
    assert "wrote 40 images (grade 0: 29, grade 1: 3, grade 2: 6, grade 3: 1, grade 4: 1)" in (
        result.output
    )
    assert len(list((tmp_path / "s" / "train_images").glob("*.png"))) == 40


def test_lr_csv_rows_per_step_and_group(
    runner: CliRunner, tmp_path: Path, tiny_dataset: Path
) -> None:
    path = write_recipe(
        tmp_path,
        tiny_dataset,
        **{
            "optim.backbone_lr_mult": 0.1,
            "schedule.name": "cosine_restarts",
            "schedule.warmup_epochs": 0,
            "schedule.t0": 1,
        },
    )
    result = runner.invoke(cli, ["lr", str(path), "--csv", "--steps-per-epoch", "5"])
    assert result.exit_code == 0, result.output
    rows = list(csv.DictReader(io.StringIO(result.output)))
    assert list(rows[0]) == ["epoch", "step", "group", "lr"]
    assert len(rows) == 3 * 5 * 2
    starts = [float(r["lr"]) for r in rows if r["group"] == "head" and int(r["step"]) % 5 == 0]
    assert starts == pytest.approx([2e-3] * 3)  # each 1-epoch SGDR cycle restarts at full LR
    backbone = {int(r["step"]): float(r["lr"]) for r in rows if r["group"] == "backbone"}
    head = {int(r["step"]): float(r["lr"]) for r in rows if r["group"] == "head"}
    assert all(backbone[s] == pytest.approx(head[s] * 0.1) for s in head)


def test_lr_table_from_data_with_notes(
    runner: CliRunner, tmp_path: Path, tiny_dataset: Path
) -> None:
    path = write_recipe(
        tmp_path, tiny_dataset, **{"schedule.warmup_epochs": 2.5, "train.epochs": 3}
    )
    result = runner.invoke(cli, ["lr", str(path)], terminal_width=200)
    assert result.exit_code == 0, result.output
    # 60 training images, batch 16 -> 3 full batches -> 3 optimizer steps per epoch
    assert "3 optimizer steps per epoch" in result.output
    assert "the head never reaches its configured LR 0.002" in result.output


def test_train_refuses_to_clobber_and_resume_needs_a_run(
    runner: CliRunner, tmp_path: Path, tiny_dataset: Path
) -> None:
    path = write_recipe(tmp_path, tiny_dataset, **{"train.epochs": 1, "schedule.warmup_epochs": 0})
    out = tmp_path / "run"
    assert runner.invoke(cli, ["train", str(path), "--out", str(out), "--resume"]).exit_code == 2
    first = runner.invoke(cli, ["train", str(path), "--out", str(out), "--quiet"])
    assert first.exit_code == 0, first.output
    assert first.output.startswith("best epoch 1/1 (completed): accuracy ")
    again = runner.invoke(cli, ["train", str(path), "--out", str(out)])
    assert again.exit_code == 2 and "already holds a run" in again.output
    extended = runner.invoke(
        cli, ["train", str(path), "--out", str(out), "--resume", "--epochs", "2", "--quiet"]
    )
    assert extended.exit_code == 0, extended.output
    assert "best epoch" in extended.output
    assert len((out / "metrics.jsonl").read_text().splitlines()) == 2
    resumes = [json.loads(x) for x in (out / "resumes.jsonl").read_text().splitlines()]
    assert resumes == [{"epoch": 1, "changed": {"train.epochs": [1, 2]}}]
    assert yaml.safe_load((out / "config.yaml").read_text())["train"]["epochs"] == 2


@pytest.mark.e2e
def test_kill_9_then_resume_matches_uninterrupted(
    runner: CliRunner, tmp_path: Path, tiny_dataset: Path
) -> None:
    path = write_recipe(tmp_path, tiny_dataset, **{"train.epochs": 5, "train.ema": True})
    reference = runner.invoke(cli, ["train", str(path), "--out", str(tmp_path / "ref"), "--quiet"])
    assert reference.exit_code == 0, reference.output
    out = tmp_path / "killed"
    env = {**os.environ, "NO_ALBUMENTATIONS_UPDATE": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "drsearch.cli", "train", str(path), "--out", str(out), "--quiet"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    log = out / "metrics.jsonl"
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        if log.exists() and len(log.read_text().splitlines()) >= 2:
            break
        time.sleep(0.05)
    assert proc.poll() is None, "the run finished before it could be killed"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    resumed = runner.invoke(cli, ["train", str(path), "--out", str(out), "--resume", "--quiet"])
    assert resumed.exit_code == 0, resumed.output
    ref_best = json.loads((tmp_path / "ref" / "metrics.json").read_text())
    got_best = json.loads((out / "metrics.json").read_text())
    assert got_best == ref_best
    ref_log = [json.loads(x)["val"] for x in (tmp_path / "ref" / "metrics.jsonl").open()]
    got_log = [json.loads(x)["val"] for x in log.open()]
    assert got_log == ref_log
