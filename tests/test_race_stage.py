"""The finalist race in a real study: rounds of runs decided on the stored evidence, the cap
kept, the crown on pooled out-of-fold counts, and what ships is what the race certified."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import yaml
from click.testing import CliRunner

from tests.conftest import tiny_recipe_dict


@pytest.mark.e2e
def test_a_raced_finalist_stage_spends_its_cap_where_the_evidence_is_open(
    tmp_path: Path, tiny_dataset: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import optuna

    from drsearch.cli import cli
    from drsearch.config.study import load_study
    from drsearch.search.race_stage import current_round
    from drsearch.search.selection import finalist_trials, plan_of

    shutil.copytree(tiny_dataset, tmp_path / "data")
    monkeypatch.chdir(tmp_path)
    recipe = tiny_recipe_dict(Path("data"), **{"data.test_fraction": 0.2, "train.epochs": 3})
    Path("recipe.yaml").write_text(yaml.safe_dump(recipe))
    Path("space.yaml").write_text("optim.lr: {type: float, low: 1.0e-3, high: 1.0e-2, log: true}\n")
    study = {
        "name": "race", "recipe": "recipe.yaml", "search_space": "space.yaml",
        "objective": {"metric": "accuracy", "constraints": []},
        "pruner": {"enabled": False}, "sampler": {"name": "random", "seed": 0},
        "budget": {"n_trials": 3},
        "finalists": {"top_k": 2, "folds": 2, "race": True, "candidates": 3},
        "resources": {"cpus_per_trial": 1, "max_concurrent": 1}, "executor": "local",
        "run_root": "runs",
    }  # fmt: skip
    Path("race.yaml").write_text(yaml.safe_dump(study))
    runner = CliRunner(env={"COLUMNS": "200"})
    result = runner.invoke(cli, ["run", "race.yaml", "--quiet"])
    assert result.exit_code == 0, result.output
    assert "finalist stage (race of the top 3 on up to 2 folds, cap 4 runs)" in result.output
    storage = f"sqlite:///{Path('runs/race.db').resolve()}"
    record = optuna.load_study(study_name="race", storage=storage).user_attrs["drsearch:finalists"]
    runs = optuna.load_study(study_name="race-confirm", storage=storage).trials
    assert record["plan"]["race"]["cap"] == 4 and record["plan"]["race"]["max_units"] == 2
    race = record["race"]
    assert race["done"] and race["spent"] == len(runs) <= 4 and not record["pending"]
    assert all(t.state.name == "COMPLETE" for t in runs)
    # every candidate entered with a fold the search never validated on; its own fold last
    for e in record["finalists"]:
        mine = sorted((t for t in runs if t.user_attrs["confirm_of"] == e["trial"]),
                      key=lambda t: t.number)  # fmt: skip
        assert [t.user_attrs["fold"] for t in mine] == [1, 0][: len(mine)]
        assert sorted(t.number for t in mine) == e["runs"]
        assert e["race"]["units"] == len(mine)
        # the confirmed figure is the pooled out-of-fold accuracy of exactly these runs
        labels, preds = [], []
        for t in mine:
            table = np.genfromtxt(Path(t.user_attrs["run_dir"]) / "predictions.csv",
                                  delimiter=",", names=True, dtype=None, encoding=None)  # fmt: skip
            labels += np.atleast_1d(table["label"]).tolist()
            preds += np.atleast_1d(table["pred"]).tolist()
        if mine:
            assert e["confirmed_primary"] == pytest.approx(np.mean(np.equal(labels, preds)))
    # the first round gave each of the 3 candidates one fold: 3 of the 4 runs
    assert len({t.user_attrs["confirm_of"] for t in runs}) == 3
    confirmed = [e for e in record["finalists"] if e.get("feasible")]
    best = max(confirmed, key=lambda e: (e["confirmed_value"], -e["trial"])) if confirmed else None
    assert record["crowned"] == (best and best["trial"])
    # the race is a function of the stored runs: read back, it is over, and a second run of
    # the study starts no run
    loaded = load_study(Path("race.yaml"))
    plan = plan_of(loaded)
    parent = optuna.load_study(study_name="race", storage=storage)
    again = current_round(plan, loaded, finalist_trials(parent, plan.top_k), runs)
    assert again.done and again.record() == race
    rerun = runner.invoke(cli, ["run", "race.yaml", "--quiet"])
    assert rerun.exit_code == 0, rerun.output
    assert len(optuna.load_study(study_name="race-confirm", storage=storage).trials) == len(runs)
    if record["crowned"] is None:
        return
    # what ships is what the race certified: the crowned candidate's runs, one ensemble
    out = runner.invoke(cli, ["export", "race.yaml", "-o", "best.yaml"])
    assert out.exit_code == 0, out.output
    body = yaml.safe_load(Path("best.yaml").read_text())["ensemble"]
    entry = next(e for e in record["finalists"] if e["trial"] == record["crowned"])
    assert sorted(body["certificate"]["runs"]) == entry["runs"]
    assert len(body["members"]) == len(entry["runs"])
