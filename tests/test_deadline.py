"""A run's time limit belongs to the rung scheduler: it counts from the first trial's start, no
trial starts after it, and the leader of the highest rung is trained to the end so the study
ends with a complete best (``drsearch.search.deadline``); with no grace to finish it, the
study names a provisional best and says so, and ``best`` exits 3."""

from __future__ import annotations

import json
import time
from pathlib import Path

import optuna
import pytest
import yaml
from click.testing import CliRunner

from drsearch.cli import cli
from drsearch.config.study import load_study
from drsearch.search.deadline import Deadline
from tests.conftest import write_tiny_study

pytestmark = pytest.mark.e2e

LR = "optim.lr: {type: float, low: 1.0e-3, high: 1.0e-2, log: true}\n"


def _study(tmp_path: Path, data: Path, **budget: float) -> Path:
    return write_tiny_study(
        tmp_path, data, LR, budget={"n_trials": 6, **budget},
        pruner={"mode": "promotion", "grace_period": 1, "reduction_factor": 2},
        objective={"metric": "accuracy", "constraints": []},
        recipe_overrides={"train.epochs": 4, "schedule.warmup_epochs": 0},
    )  # fmt: skip


def _trials(path: Path) -> list[optuna.trial.FrozenTrial]:
    storage = load_study(path).config.storage_url()
    return optuna.load_study(study_name="tiny", storage=storage).get_trials()


def test_a_limit_shorter_than_start_up_still_trains_and_finishes_the_leader(
    tmp_path: Path, tiny_dataset: Path
) -> None:
    """A limit of a millisecond (shorter than importing torch): counted from the first
    trial's start, it lets that trial start; at the limit nothing else starts, the trial
    (paused at its first rung by promotion ASHA) is the leader and trains to the end: the
    study ends with a complete best, and the summary says the limit ended it."""
    path = _study(tmp_path, tiny_dataset, time_limit_s=0.001)
    out = CliRunner().invoke(cli, ["run", str(path), "--quiet"])
    assert out.exit_code == 0, out.output
    trials = _trials(path)
    assert len(trials) == 1  # nothing started after the limit
    (t,) = trials
    assert t.state.name == "COMPLETE" and sorted(t.intermediate_values) == [1, 2, 3, 4]
    assert t.system_attrs.get("drsearch:finishing") is True
    assert "time limit: 0.001 s from the first trial's start, reached" in out.output
    assert "trial(s) 0 (the leader of the highest rung) trained to the end" in out.output
    assert "next steps:" in out.output


def test_no_grace_leaves_the_leader_paused_and_names_a_provisional_best(
    tmp_path: Path, tiny_dataset: Path
) -> None:
    """finish_grace_s: 0 (a hard wall, say a job's end): the leader stays paused; the run
    names it as the provisional best, `trials` shows it paused with its rung and epochs,
    `best` says why there is no winner with exit 3, and continuing goes on with it."""
    path = _study(tmp_path, tiny_dataset, time_limit_s=0.001, finish_grace_s=0)
    runner = CliRunner()
    out = runner.invoke(cli, ["run", str(path), "--quiet"])
    assert out.exit_code == 0, out.output
    (t,) = _trials(path)
    assert t.state.name == "RUNNING" and t.system_attrs["drsearch:paused_at"] == 1
    assert "the leader was not finished: trial 0, the leader of rung 1" in out.output
    assert "paused at a rung (the next run goes on with them): trials 0 (epoch 1)" in out.output
    assert "provisionally best: trial 0 by its value at epoch 1 (not a winner)" in out.output
    assert "drsearch export" not in out.output.split("next steps:")[1].split("no winner")[0]
    listed = runner.invoke(cli, ["trials", str(path), "--format", "json"])
    (row,) = json.loads(listed.output)
    assert (row["state"], row["epochs"]) == ("PAUSED", 1)
    assert "paused at the rung of epoch 1" in row["note"]
    best = runner.invoke(cli, ["best", str(path)])
    assert best.exit_code == 3, best.output
    assert "no winner: no trial was trained to the end" in best.output
    assert "closest: trial 0, the best at epoch 1" in best.output
    assert "names no winner" in best.output.splitlines()[-1]
    export = runner.invoke(cli, ["export", str(path), "-o", str(tmp_path / "x.yaml")])
    assert export.exit_code == 3 and "no trial was trained to the end" in export.output
    # what `best` suggests for it works as printed: the paused trial as it stands
    suggested = next(line for line in best.output.splitlines() if "--trial 0 -o" in line)
    args = suggested.split("#")[0].split()[1:]  # drsearch export tiny.yaml --trial 0 -o ...
    args[args.index("-o") + 1] = str(tmp_path / "p.yaml")
    taken = runner.invoke(cli, [*args, "--weights", str(tmp_path / "p.pt")])
    assert taken.exit_code == 0, taken.output
    pinned = yaml.safe_load((tmp_path / "p.yaml").read_text())["pinned"]["provenance"]
    assert (pinned["trial"], pinned["state"]) == (0, "PAUSED")
    assert "best-epoch weights (epoch 1)" in taken.output


def test_the_limit_counts_from_the_first_trial_and_the_grace_from_the_leaders_pace() -> None:
    d = Deadline(limit_s=60, grace_s=10, max_epochs=10)
    assert d.at is None and not d.passed()  # start-up is not the search's time
    d.trial_started()
    assert d.at == pytest.approx(time.time() + 60, abs=5) and not d.passed()
    d.first_start = time.time() - 61
    assert d.passed() and d.passed()  # reached, and it stays so
    leader = optuna.trial.create_trial(
        state=optuna.trial.TrialState.RUNNING,
        system_attrs={"drsearch:paused_at": 2},
        user_attrs={"wall_seconds": 4.0},
    )
    leader.number = 7
    assert d.needs(leader) == pytest.approx(16.0)  # 2 s an epoch, 8 epochs to go
    assert not d.fits(leader) and "would need about 16 s" in (d.not_finished or "")
    assert Deadline(limit_s=60, grace_s=None, max_epochs=10).fits(leader)  # unset: always
