"""A study continued under another definition is refused in one line, unless accepted."""

from __future__ import annotations

from pathlib import Path

import optuna
import yaml
from click.testing import CliRunner

from drsearch.cli import cli
from drsearch.config.study import load_study
from drsearch.search.definition import ACCEPTED_ATTR, DEFINITION_ATTR, changes, definition
from tests.conftest import write_tiny_study

SPACE = "optim.lr: {type: float, low: 1.0e-3, high: 1.0e-2, log: true}\n"


def _edit(path: Path, **changes: object) -> None:
    data = yaml.safe_load(path.read_text())
    data.update(changes)
    path.write_text(yaml.safe_dump(data))


def test_a_changed_objective_is_refused_then_accepted_and_recorded(
    tmp_path: Path, tiny_dataset: Path
) -> None:
    path = write_tiny_study(
        tmp_path, tiny_dataset, SPACE, budget={"n_trials": 1}, pruner={"enabled": False},
        recipe_overrides={"train.epochs": 2},
    )  # fmt: skip
    runner = CliRunner()
    first = runner.invoke(cli, ["run", str(path), "--quiet"])
    assert first.exit_code == 0, first.output
    objective = yaml.safe_load(path.read_text())["objective"]
    objective["constraints"][0]["min"] = 0.6
    _edit(path, objective=objective)
    refused = runner.invoke(cli, ["run", str(path), "--quiet", "--n-trials", "2"])
    assert refused.exit_code == 2, refused.output
    (line,) = [ln for ln in refused.output.splitlines() if ln.strip()]
    assert line.startswith(f"Error: {path}: study tiny was created with another definition (")
    assert "objective.constraints.0.min: 0.5 -> 0.6" in line and "--accept-changes" in line
    storage = f"sqlite:///{tmp_path / 'runs' / 'tiny.db'}"
    assert len(optuna.load_study(study_name="tiny", storage=storage).trials) == 1  # none claimed

    accepted = runner.invoke(
        cli, ["run", str(path), "--quiet", "--n-trials", "2", "--accept-changes"]
    )
    assert accepted.exit_code == 0, accepted.output
    study = optuna.load_study(study_name="tiny", storage=storage)
    assert len(study.trials) == 2
    attrs = study._storage.get_study_system_attrs(study._study_id)
    (record,) = attrs[ACCEPTED_ATTR]
    assert record["changes"] == ["objective.constraints.0.min: 0.5 -> 0.6"]
    assert attrs[DEFINITION_ATTR]["objective.constraints.0.min"] == 0.6
    # now the definition it runs under: continuing needs nothing more
    again = runner.invoke(cli, ["run", str(path), "--quiet", "--n-trials", "2"])
    assert again.exit_code == 0, again.output


def test_where_and_how_a_run_happens_is_not_part_of_the_definition(
    tmp_path: Path, tiny_dataset: Path
) -> None:
    path = write_tiny_study(tmp_path, tiny_dataset, SPACE)
    base = definition(load_study(path))
    moved = definition(
        load_study(
            path,
            {"budget.n_trials": 40, "executor": "ray", "resources.max_concurrent": 2},
            recipe_overrides={"data.root": str(tmp_path / "elsewhere"), "train.threads": 1},
        )
    )
    assert changes(base, moved) == []
    other = definition(load_study(path, recipe_overrides={"optim.weight_decay": 0.5}))
    assert changes(base, other) == ["recipe.optim.weight_decay: 0.05 -> 0.5"]


def _copy_data(src: Path, dst: Path, drop: int = 0, relabel: int = 0) -> Path:
    """A copy of an APTOS-layout set, less its last ``drop`` rows, with the grade of its first
    ``relabel`` rows moved up by one (mod 5)."""
    import csv
    import shutil

    shutil.copytree(src, dst)
    with (src / "train.csv").open(newline="") as fh:
        rows = list(csv.DictReader(fh))
    rows = rows[: len(rows) - drop]
    for row in rows[:relabel]:
        row["diagnosis"] = str((int(row["diagnosis"]) + 1) % 5)
    with (dst / "train.csv").open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=["id_code", "diagnosis"])
        writer.writeheader()
        writer.writerows({"id_code": r["id_code"], "diagnosis": r["diagnosis"]} for r in rows)
    return dst


def _point_at(tmp_path: Path, root: Path) -> None:
    recipe = tmp_path / "recipe.yaml"
    data = yaml.safe_load(recipe.read_text())
    data["data"]["root"] = str(root)
    recipe.write_text(yaml.safe_dump(data))


def _stored(storage: str) -> dict:
    study = optuna.load_study(study_name="tiny", storage=storage)
    return study._storage.get_study_system_attrs(study._study_id)


def test_continuing_on_other_data_is_refused_then_accepted_and_recorded(
    tmp_path: Path, tiny_dataset: Path
) -> None:
    import json

    first_data = _copy_data(tiny_dataset, tmp_path / "data")
    path = write_tiny_study(
        tmp_path, first_data, SPACE, budget={"n_trials": 1}, pruner={"enabled": False},
        recipe_overrides={"train.epochs": 2},
    )  # fmt: skip
    storage = f"sqlite:///{tmp_path / 'runs' / 'tiny.db'}"
    runner = CliRunner()
    first = runner.invoke(cli, ["run", str(path), "--quiet"])
    assert first.exit_code == 0, first.output
    stored = _stored(storage)[DEFINITION_ATTR]["data"]
    assert stored["n_images"] == 80 and sum(stored["grade_counts"]) == 80
    # the same thing the trainer records for its run (no image was dropped)
    (run_json,) = (tmp_path / "runs").rglob("run.json")
    trained = json.loads(run_json.read_text())["data_fingerprint"]
    for key in ("images_sha256", "split_sha256", "test_sha256"):
        assert stored[key] == trained[key]

    # the same data copied to another folder: the same data, not refused
    _point_at(tmp_path, _copy_data(first_data, tmp_path / "moved"))
    moved = runner.invoke(cli, ["run", str(path), "--quiet"])
    assert moved.exit_code == 0, moved.output
    assert _stored(storage)[DEFINITION_ATTR]["data"] == stored

    # other data: ten images fewer, four relabelled
    _point_at(tmp_path, _copy_data(first_data, tmp_path / "other", drop=10, relabel=4))
    refused = runner.invoke(cli, ["run", str(path), "--quiet", "--n-trials", "2"])
    assert refused.exit_code == 2, refused.output
    (line,) = [ln for ln in refused.output.splitlines() if ln.strip()]
    assert line.startswith(
        f"Error: {path}: data.root: the data changed since study tiny began (fingerprint "
        f"{stored['fingerprint']} -> "
    )
    assert ": 80 -> 70 images, grade counts " in line and "--accept-changes" in line
    assert len(optuna.load_study(study_name="tiny", storage=storage).trials) == 1
    # its finalists would be retrained on the other data: refused as well
    confirm = runner.invoke(cli, ["confirm", str(path), "--seeds", "2", "--top-k", "1", "--quiet"])
    assert confirm.exit_code == 2, confirm.output
    lines = [ln for ln in confirm.output.splitlines() if ln.strip()]
    assert len(lines) == 1, confirm.output
    (line,) = lines
    assert "the data changed since study tiny began" in line and "--accept-changes" in line

    accepted = runner.invoke(
        cli, ["run", str(path), "--quiet", "--n-trials", "2", "--accept-changes"]
    )
    assert accepted.exit_code == 0, accepted.output
    attrs = _stored(storage)
    assert len(optuna.load_study(study_name="tiny", storage=storage).trials) == 2
    (record,) = attrs[ACCEPTED_ATTR]
    (change,) = record["changes"]
    assert change.startswith(f"data: fingerprint {stored['fingerprint']} -> ")
    new = attrs[DEFINITION_ATTR]["data"]
    assert new["n_images"] == 70 and new["fingerprint"] in change
    again = runner.invoke(cli, ["run", str(path), "--quiet"])  # now the study's data
    assert again.exit_code == 0, again.output


def test_a_study_stored_without_its_data_gets_them_unrefused(
    tmp_path: Path, tiny_dataset: Path
) -> None:
    from drsearch.search.checks import check_inputs
    from drsearch.search.definition import check_definition

    loaded = load_study(write_tiny_study(tmp_path, tiny_dataset, SPACE))
    data: dict = {}
    check_inputs(loaded, data=data)
    storage = optuna.storages.InMemoryStorage()
    study_id = storage.create_new_study([optuna.study.StudyDirection.MAXIMIZE], "tiny")
    before = definition(loaded)  # as a study begun before the data were stored has it
    assert "data" not in before
    storage.set_study_system_attr(study_id, DEFINITION_ATTR, before)
    assert check_definition(storage, study_id, loaded, False, True, data) == []
    attrs = storage.get_study_system_attrs(study_id)
    assert attrs[DEFINITION_ATTR]["data"]["images_sha256"] == data["images_sha256"]
    assert ACCEPTED_ATTR not in attrs  # nothing changed: stored, not recorded as a change
    # a caller that did not list the data leaves the stored data as they are
    assert check_definition(storage, study_id, loaded, False, True, None) == []
    assert storage.get_study_system_attrs(study_id)[DEFINITION_ATTR] == attrs[DEFINITION_ATTR]
