"""What a study needs from the machine is found by `check` and by `run` before the first trial
is claimed: one line naming the file, the key and the fix, exit 2, nothing created."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml
from click.testing import CliRunner

from drsearch.cli import cli
from tests.conftest import write_tiny_study
from tests.test_security import Exploit

SPACE = "optim.lr: {type: float, low: 1.0e-3, high: 1.0e-2, log: true}\n"


def _one_line(out: str) -> str:
    lines = [ln for ln in out.splitlines() if ln.strip() and not ln.startswith("Warning")]
    assert len(lines) == 1, out
    assert "Traceback" not in out
    return lines[0]


def _both(study: Path, *extra: str) -> list[str]:
    """`check` and `run` on the study: each exits 2 with one line; returns the lines."""
    lines = []
    for command in (["check", str(study)], ["run", str(study), "--quiet", *extra]):
        out = CliRunner().invoke(cli, command)
        assert out.exit_code == 2, (command, out.output)
        lines.append(_one_line(out.output))
    return lines


def test_a_run_root_that_is_a_file_is_one_line(tmp_path: Path, tiny_dataset: Path) -> None:
    (tmp_path / "afile").write_text("x")
    for root in ("afile", "afile/sub"):
        study = write_tiny_study(tmp_path, tiny_dataset, SPACE, run_root=str(tmp_path / root))
        for line in _both(study):
            assert line == (
                f"Error: {study}: run_root: {tmp_path / root}: {tmp_path / 'afile'} is a file, "
                "not a folder; name a folder (or a new one) with run_root or --run-root"
            )
    assert (tmp_path / "afile").read_text() == "x"


def test_a_read_only_run_root_is_one_line(
    tmp_path: Path, tiny_dataset: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import os

    locked = tmp_path / "locked"
    locked.mkdir()
    real = os.access
    # tests run as root here, which writes anywhere: the permission is what os.access says
    monkeypatch.setattr(os, "access", lambda p, m: real(p, m) and Path(p) != locked)
    study = write_tiny_study(tmp_path, tiny_dataset, SPACE, run_root=str(locked / "runs"))
    for line in _both(study):
        assert (
            f"run_root: {locked / 'runs'}: not writable (its nearest existing folder {locked})"
            in line
        )
    assert not list(locked.iterdir())


@pytest.mark.parametrize("root", ["empty", "../../../../../../etc"])
def test_a_data_folder_without_labels_stops_check_and_run_before_any_trial(
    tmp_path: Path, tiny_dataset: Path, root: str
) -> None:
    (tmp_path / "empty").mkdir()
    data = str(tmp_path / root) if root == "empty" else root
    study = write_tiny_study(tmp_path, tiny_dataset, SPACE, recipe_overrides={"data.root": data})
    for line in _both(study):
        assert line.startswith(f"Error: {study}: data: ")
        assert "train.csv: label file not found; check data.root in the recipe" in line
    assert not (tmp_path / "runs").exists()  # no database, no trial folder


@pytest.mark.parametrize("kind", ["pickle", "damaged", "safetensors"])
def test_refused_weights_stop_check_and_run_before_any_trial(
    tmp_path: Path, tiny_dataset: Path, kind: str
) -> None:
    marker = tmp_path / "pwned"
    weights = tmp_path / ("w.safetensors" if kind == "safetensors" else "w.pt")
    if kind == "pickle":
        torch.save({"model": {"conv.weight": Exploit(marker)}}, weights)
    elif kind == "damaged":  # a real file of tensors, cut short
        torch.save({"conv.weight": torch.zeros(64, 64)}, weights)
        weights.write_bytes(weights.read_bytes()[:1000])
    else:
        weights.write_bytes(b"\x00not tensors" * 10)
    study = write_tiny_study(
        tmp_path, tiny_dataset, SPACE, recipe_overrides={"model.pretrained": str(weights)}
    )
    for line in _both(study):
        assert line.startswith(f"Error: {study}: model.pretrained: {weights}: ")
        expected = {
            "pickle": "refused: it holds objects other than tensors",
            "damaged": "not a readable file of tensors",
            "safetensors": "not a readable safetensors file",
        }[kind]
        assert expected in line
    assert not marker.exists() and not (tmp_path / "runs").exists()
    assert yaml.safe_load(study.read_text())["budget"]["n_trials"] == 2


def test_a_trial_the_machine_cannot_place_is_refused_before_any_trial(
    tmp_path: Path, tiny_dataset: Path
) -> None:
    """Ray keeps a trial that asks for more CPUs or GPUs than the machine has PENDING,
    silently, forever: `check` and `run` say so first."""
    import os

    import torch

    cpus, gpus = os.cpu_count() or 1, torch.cuda.device_count()
    study = write_tiny_study(
        tmp_path, tiny_dataset, SPACE, executor="ray",
        resources={"cpus_per_trial": cpus + 2, "gpus_per_trial": gpus + 1, "max_concurrent": 1},
    )  # fmt: skip
    for line in _both(study):
        assert line.startswith(f"Error: {study}: resources.cpus_per_trial: {cpus + 2} per trial")
        assert f"resources.gpus_per_trial: {gpus + 1} per trial" in line
        assert "no trial could ever be placed" in line and "--ray-address" in line
    assert not (tmp_path / "runs").exists()
    # a cluster is asked by Ray itself; the local executor places no trial
    local = write_tiny_study(
        tmp_path, tiny_dataset, SPACE, executor="local",
        resources={"cpus_per_trial": cpus + 2, "max_concurrent": 1},
    )  # fmt: skip
    assert CliRunner().invoke(cli, ["check", str(local)]).exit_code == 0
    # ... but a GPU or memory this machine lacks is refused for it too
    import psutil

    total = psutil.virtual_memory().total / 1024**3
    greedy = write_tiny_study(
        tmp_path, tiny_dataset, SPACE, executor="local",
        resources={"gpus_per_trial": gpus + 1, "memory_gb_per_trial": 2 * total},
    )  # fmt: skip
    for line in _both(greedy):
        assert f"resources.memory_gb_per_trial: {2 * total:g} GiB per trial, but this " in line
        assert f"resources.gpus_per_trial: {gpus + 1} per trial" in line
        assert "PENDING" not in line
