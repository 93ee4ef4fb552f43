"""drsearch export: a trial becomes a pinned recipe that retrains to the same metrics."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from drsearch.cli import cli
from tests.conftest import write_tiny_study

pytestmark = pytest.mark.e2e
SPACE = "optim.lr: {type: float, low: 1.0e-3, high: 1.0e-2, log: true}\n"


@pytest.fixture
def finished_study(tmp_path: Path, tiny_dataset: Path) -> tuple[Path, Path]:
    data = tmp_path / "data"
    shutil.copytree(tiny_dataset, data)
    path = write_tiny_study(
        tmp_path,
        data,
        SPACE,
        storage=None,
        pruner={"enabled": False},
        recipe_overrides={"train.epochs": 2},
        objective={"metric": "accuracy", "constraints": []},
    )
    result = CliRunner().invoke(cli, ["run", str(path), "--quiet"])
    assert result.exit_code == 0, result.output
    return path, data


def test_export_pins_and_retrains_to_the_same_metrics(
    tmp_path: Path, finished_study: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    path, _ = finished_study
    monkeypatch.chdir(tmp_path)  # the project folder, as a user would export from
    runner = CliRunner()
    out = tmp_path / "recipes" / "best.yaml"
    exported = runner.invoke(cli, ["export", str(path), "-o", str(out)])
    assert exported.exit_code == 0, exported.output
    assert yaml.safe_load(out.read_text())["data"]["root"] == "data"  # as a user writes it
    pinned = yaml.safe_load(out.read_text())["pinned"]
    assert set(pinned["versions"]) >= {"python", "torch", "timm", "albumentations", "drsearch"}
    assert len(pinned["data_fingerprint"]["images_sha256"]) == 64
    assert pinned["provenance"]["study"] == "tiny"
    trial_number = pinned["provenance"]["trial"]
    assert f"trial {trial_number} (COMPLETE" in exported.output
    assert "optim.lr" in pinned["provenance"]["params"]
    assert "range" not in out.read_text() and "low:" not in out.read_text()

    retrained = runner.invoke(
        cli, ["train", str(out), "--out", str(tmp_path / "again"), "--quiet", "--strict"]
    )
    assert retrained.exit_code == 0, retrained.output
    assert "Warning" not in retrained.output
    again = json.loads((tmp_path / "again" / "metrics.json").read_text())
    metrics = pinned["provenance"]["metrics"]
    for key in ("accuracy", "qwk", "sensitivity", "specificity"):
        assert again[key] == metrics[key], key


def test_drift_warns_and_strict_refuses(tmp_path: Path, finished_study: tuple[Path, Path]) -> None:
    path, data = finished_study
    runner = CliRunner()
    out = tmp_path / "pinned.yaml"
    assert runner.invoke(cli, ["export", str(path), "--trial", "1", "-o", str(out)]).exit_code == 0
    recipe = yaml.safe_load(out.read_text())
    recipe["pinned"]["versions"]["torch"] = "0.0.1"
    out.write_text(yaml.safe_dump(recipe))
    lines = (data / "train.csv").read_text().splitlines()
    image_id, label = lines[1].split(",")
    lines[1] = f"{image_id},{(int(label) + 1) % 5}"  # one relabelled image
    (data / "train.csv").write_text("\n".join(lines) + "\n")

    strict = runner.invoke(cli, ["train", str(out), "--strict", "--out", str(tmp_path / "s")])
    assert strict.exit_code == 2
    # the relabelled image also moves the grade-stratified split: three differences
    assert "the pinned recipe does not match (3)" in strict.output
    assert "the recipe pins 0.0.1" in strict.output and "image list" in strict.output
    assert "validation split differs" in strict.output
    assert not (tmp_path / "s").exists()
    lenient = runner.invoke(
        cli, ["train", str(out), "--quiet", "--epochs", "2", "--out", str(tmp_path / "l")]
    )
    assert lenient.exit_code == 0, lenient.output
    assert lenient.output.count("Warning: ") == 3


def test_export_never_writes_the_storage_password(
    tmp_path: Path, finished_study: tuple[Path, Path]
) -> None:
    from drsearch.config.study import load_study
    from drsearch.search.export import pinned_recipe, select_trial

    path, _ = finished_study
    loaded = load_study(path)
    trial = select_trial(loaded, "best")
    loaded.config.storage = loaded.config.storage_url().replace(
        "sqlite:///", "sqlite://user:hunter2@/"
    )
    recipe = pinned_recipe(loaded, trial)
    assert "hunter2" not in json.dumps(recipe.model_dump(mode="json"))


def test_export_errors(tmp_path: Path, finished_study: tuple[Path, Path]) -> None:
    path, _ = finished_study
    runner = CliRunner()
    bad = runner.invoke(cli, ["export", str(path), "--trial", "9", "-o", str(tmp_path / "x")])
    assert (
        bad.exit_code == 2
        and "--trial: expected 'best', 'search-best' or a trial number < 2" in (bad.output)
    )


def test_lr_of_a_study_names_what_is_searched_and_shows_a_trials_own(
    finished_study: tuple[Path, Path],
) -> None:
    import optuna

    path, _ = finished_study
    runner = CliRunner()
    base = runner.invoke(cli, ["lr", str(path), "--steps-per-epoch", "2"])
    assert base.exit_code == 0, base.output
    assert "searched by the study" in base.output and "optim.lr 0.001 to 0.01, log scale" in (
        base.output
    )
    storage = f"sqlite:///{path.parent / 'runs' / 'tiny.db'}"
    trial = optuna.load_study(study_name="tiny", storage=storage).trials[1]
    one = runner.invoke(cli, ["lr", str(path), "--trial", "1", "--csv", "--steps-per-epoch", "2"])
    assert one.exit_code == 0, one.output
    rows = [line.split(",") for line in one.output.splitlines()[1:]]
    head = max(float(lr) for _, _, group, lr in rows if group == "head")
    assert head == pytest.approx(trial.params["optim.lr"])  # its own LR, not the base recipe's
    recipe = runner.invoke(cli, ["lr", str(path.parent / "recipe.yaml"), "--trial", "1"])
    assert recipe.exit_code == 2 and "--trial and --smoke are for a study file" in recipe.output


def test_best_epoch_weights_travel_with_the_recipe(
    tmp_path: Path, finished_study: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    import hashlib

    import torch

    from drsearch.config import load_recipe
    from drsearch.train.model import build_model, load_local_weights

    path, _ = finished_study
    monkeypatch.chdir(tmp_path)
    out, weights = Path("recipes/best.yaml"), Path("recipes/best.pt")
    result = CliRunner().invoke(
        cli, ["export", str(path), "-o", str(out), "--weights", str(weights)]
    )
    assert result.exit_code == 0, result.output
    pinned = yaml.safe_load(out.read_text())["pinned"]["provenance"]
    saved = torch.load(weights, weights_only=True)  # tensors, numbers and strings only
    assert saved["epoch"] == pinned["metrics"]["best_epoch"] and saved["study"] == "tiny"
    assert saved["trial"] == pinned["trial"]
    assert saved["recipe_sha256"] == hashlib.sha256(out.read_bytes()).hexdigest()
    assert f"best-epoch weights (epoch {saved['epoch']}) -> {weights}" in result.output
    # the very weights of the trial's best epoch, and they load as the recipe's model
    best = torch.load(Path(pinned["run_dir"]) / "checkpoints" / "best.pt", weights_only=True)
    assert best["model"].keys() == saved["state_dict"].keys()
    assert all(torch.equal(best["model"][k], v) for k, v in saved["state_dict"].items())
    model = build_model(load_recipe(out).model)
    problems = load_local_weights(model, weights)
    assert not any(problems.values()), problems  # every key, head included
    for k, v in model.state_dict().items():
        assert torch.equal(v, saved["state_dict"][k])
