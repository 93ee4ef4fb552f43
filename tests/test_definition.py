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
