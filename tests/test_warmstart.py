"""Warm starts from an earlier study and the baseline trial."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import optuna
import pytest
from click.testing import CliRunner

from drsearch.cli import cli
from drsearch.config.space import CategoricalParam, FloatParam, IntParam
from drsearch.search.warmstart import FROM_ATTR, QUEUED_ATTR, map_onto, within
from tests.conftest import write_tiny_study

SPACE = (
    "optim.lr: {type: float, low: 1.0e-3, high: 1.0e-2, log: true}\n"
    "augment.strength: {type: float, low: 0.0, high: 1.0}\n"
)


def test_a_configuration_is_mapped_onto_the_new_space_key_by_key() -> None:
    space = {
        "optim.lr": FloatParam(type="float", low=1e-3, high=1e-2, log=True),
        "train.batch_size": CategoricalParam(type="categorical", choices=[16, 32]),
        "schedule.t0": IntParam(type="int", low=1, high=7, step=2),
    }
    assert within(space["schedule.t0"], 5) and not within(space["schedule.t0"], 4)
    assert not within(space["train.batch_size"], 24) and within(space["optim.lr"], 1e-2)
    kept = map_onto({"optim.lr": 2e-3, "model.drop_rate": 0.2, "train.batch_size": 32}, space)
    assert kept.params == {"optim.lr": 2e-3, "train.batch_size": 32}
    assert kept.dropped == ["model.drop_rate"] and kept.outside == []
    refused = map_onto({"optim.lr": 0.05, "train.batch_size": 24}, space)
    assert refused.outside == [
        "optim.lr=0.05 outside [0.001, 0.01]",
        "train.batch_size=24 outside choices [16, 32]",
    ]


def _earlier_study(url: str) -> None:
    """An earlier study: four complete trials (three feasible) and a pruned one."""
    study = optuna.create_study(study_name="earlier", storage=url, direction="maximize")
    lr = optuna.distributions.FloatDistribution(1e-4, 1e-1, log=True)
    drop = optuna.distributions.FloatDistribution(0.0, 0.5)
    rows = [  # lr, drop_rate, value, feasible, state
        (2e-3, 0.1, 0.70, True, "COMPLETE"),
        (5e-2, 0.2, 0.90, True, "COMPLETE"),  # the best: its lr is outside the new space
        (4e-3, 0.3, 0.80, True, "COMPLETE"),
        (3e-3, 0.0, 0.95, False, "COMPLETE"),  # infeasible: never a warm start
        (6e-3, 0.0, None, None, "PRUNED"),
    ]
    for lr_value, drop_value, value, feasible, state in rows:
        study.add_trial(
            optuna.trial.create_trial(
                params={"optim.lr": lr_value, "model.drop_rate": drop_value},
                distributions={"optim.lr": lr, "model.drop_rate": drop},
                value=value,
                state=optuna.trial.TrialState[state],
                user_attrs={} if feasible is None else {"feasible": feasible},
            )
        )


@pytest.mark.e2e
def test_a_warm_start_queues_the_top_k_once_under_three_runners_after_the_baseline(
    tmp_path: Path, tiny_dataset: Path
) -> None:
    source = f"sqlite:///{tmp_path / 'earlier.db'}"
    _earlier_study(source)
    path = write_tiny_study(
        tmp_path,
        tiny_dataset,
        SPACE,
        budget={"n_trials": 4},
        pruner={"enabled": False},
        recipe_overrides={"train.epochs": 1, "schedule.warmup_epochs": 0},
        warm_start={"study_name": "earlier", "storage": source, "top_k": 3},
        baseline={},
        tracking={"mlflow": {}},  # three runners starting together: one set of MLflow runs
    )
    env = os.environ | {"NO_ALBUMENTATIONS_UPDATE": "1"}
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "drsearch.cli", "run", path.name, "--quiet"],
            cwd=tmp_path,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )  # fmt: skip
        for _ in range(3)
    ]
    outputs = [p.communicate(timeout=600)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0, 0], outputs
    study = optuna.load_study(study_name="tiny", storage=f"sqlite:///{tmp_path / 'runs/tiny.db'}")
    trials = study.get_trials()
    queued = [(t.number, t.user_attrs.get(FROM_ATTR)) for t in trials if FROM_ATTR in t.user_attrs]
    # the baseline first, then the feasible top 3 of the earlier study less the one refused:
    # each queued once although three runners started together
    assert queued == [(0, "baseline"), (1, "study earlier trial 2"), (2, "study earlier trial 0")]
    assert len(trials) == 4 and all(t.state.name == "COMPLETE" for t in trials)
    assert trials[0].params == {"optim.lr": 2e-3, "augment.strength": 0.5}  # the recipe's own
    assert trials[1].params["optim.lr"] == 4e-3 and trials[2].params["optim.lr"] == 2e-3
    assert 0.0 <= trials[1].params["augment.strength"] <= 1.0  # not searched before: sampled
    assert "model.drop_rate" not in trials[1].params
    said = "\n".join(outputs)
    assert (
        said.count("warm start: study earlier trial 1 refused: optim.lr=0.05 outside [0.001, 0.01]")
        == 1
    )
    assert said.count("model.drop_rate not searched here: dropped") == 2  # trials 2 and 0
    assert said.count("queued the baseline") == 1
    stored = study._storage.get_study_system_attrs(study._study_id)[QUEUED_ATTR]
    assert stored[0] == "baseline" and stored[1].startswith("study earlier in sqlite:///")

    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'runs' / 'tiny-mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name("tiny").experiment_id])
    kinds = sorted(r.data.tags["drsearch.kind"] for r in runs)
    assert kinds == ["study"] + ["trial"] * 4, kinds
    baseline_run = next(r for r in runs if r.data.tags.get("drsearch.trial") == "0")
    assert baseline_run.data.tags["drsearch.queued_from"] == "baseline"

    ran = sum(
        int(o.split("this run: ")[1].split(" trial")[0]) for o in outputs if "this run: " in o
    )
    assert ran == 4  # the queued trials count for the runner that ran them

    again = CliRunner().invoke(cli, ["run", str(path), "--quiet", "--n-trials", "5"])
    assert again.exit_code == 0, again.output
    assert "queued" not in again.output and "refused" not in again.output  # once per study
    assert len(study.get_trials()) == 5

    report = CliRunner().invoke(cli, ["report", str(path), "--out", str(tmp_path / "rep")])
    assert report.exit_code == 0, report.output
    page = (tmp_path / "rep" / "report.html").read_text()
    assert "Baseline (the base recipe as it is): trial 0, value" in page


def test_a_baseline_outside_the_space_and_a_missing_source_are_refused_up_front(
    tmp_path: Path, tiny_dataset: Path
) -> None:
    path = write_tiny_study(
        tmp_path,
        tiny_dataset,
        "optim.lr: {type: float, low: 1.0e-2, high: 1.0e-1, log: true}\n",
        baseline={},
    )
    checked = CliRunner().invoke(cli, ["check", str(path)])
    assert checked.exit_code == 2 and "baseline: the recipe's optim.lr is 0.002" in checked.output
    ran = CliRunner().invoke(cli, ["run", str(path), "--quiet"])
    assert ran.exit_code == 2
    assert "baseline: the recipe's optim.lr is 0.002, outside the search space's [0.01, 0.1]" in (
        ran.output
    )
    assert not list((tmp_path / "runs" / "tiny").glob("*/0000"))  # no trial started
    other = write_tiny_study(tmp_path, tiny_dataset, SPACE, name="other")
    missing = CliRunner().invoke(
        cli, ["run", str(other), "--quiet", "--warm-start", str(tmp_path / "nowhere.yaml")]
    )
    assert missing.exit_code == 2 and "warm_start.study" in missing.output
    assert "nowhere.yaml is not a file" in missing.output


@pytest.mark.e2e
def test_a_warm_started_study_never_draws_its_sources_configurations_again(
    tmp_path: Path, tiny_dataset: Path
) -> None:
    """A study warm-started from one with the same space, seed and even name (another run
    root): its own draws are not the source's (the per-trial seed includes the study and its
    source), and no two of its trials ran the same configuration (a queued one is held: a
    draw equal to it is drawn again)."""
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    recipe = {"train.epochs": 1, "schedule.warmup_epochs": 0}
    source = write_tiny_study(
        tmp_path / "a", tiny_dataset, SPACE, name="same", budget={"n_trials": 4},
        pruner={"enabled": False}, recipe_overrides=recipe,
        objective={"metric": "accuracy", "constraints": []},
    )  # fmt: skip
    assert CliRunner().invoke(cli, ["run", str(source), "--quiet"]).exit_code == 0
    later = write_tiny_study(
        tmp_path / "b", tiny_dataset, SPACE, name="same", budget={"n_trials": 6},
        pruner={"enabled": False}, recipe_overrides=recipe,
        objective={"metric": "accuracy", "constraints": []},
        warm_start={"study": str(source), "top_k": 4},
    )  # fmt: skip
    out = CliRunner().invoke(cli, ["run", str(later), "--quiet"])
    assert out.exit_code == 0, out.output
    assert "ran the same parameters" not in out.output
    earlier = optuna.load_study(
        study_name="same", storage=f"sqlite:///{tmp_path / 'a' / 'runs' / 'same.db'}"
    ).get_trials()
    trials = optuna.load_study(
        study_name="same", storage=f"sqlite:///{tmp_path / 'b' / 'runs' / 'same.db'}"
    ).get_trials()
    drawn = [t.params for t in trials if FROM_ATTR not in t.user_attrs]
    assert len(drawn) >= 2
    assert not [p for p in drawn if p in [t.params for t in earlier]]
    keys = [json.dumps(t.params, sort_keys=True) for t in trials]
    assert len(set(keys)) == len(keys)
