"""The Optuna study as source of truth: idempotent writes, constraints, interrupted trials."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import optuna
from optuna.trial import TrialState

from drsearch.config.study import StudyConfig
from drsearch.search.database import masked_url
from drsearch.search.liveness import HEARTBEAT_ATTR, RUNNER_ATTR, process_start
from drsearch.search.store import StudyStore
from drsearch.search.trial import Outcome


def store(tmp_path: Path, **study: object) -> StudyStore:
    cfg = StudyConfig(
        name="s", recipe=Path("r.yaml"), search_space=Path("x.yaml"), run_root=tmp_path, **study
    )
    return StudyStore(cfg)


def claim(s: StudyStore) -> optuna.Trial:
    trial = s.claim()
    assert trial is not None
    return trial


def outcome(value: float, feasible: bool) -> Outcome:
    c = -0.1 if feasible else 0.2
    return Outcome(
        "COMPLETE",
        value,
        {"accuracy": value, "feasible": feasible},
        {"sensitivity_pdr>=0.95": c, "min_specificity>=0.9": -0.05},
    )


def test_default_storage_is_sqlite_beside_the_study_folder(tmp_path: Path) -> None:
    s = store(tmp_path)
    assert s.config.storage_url() == f"sqlite:///{tmp_path.resolve()}/s.db"
    assert (tmp_path / "s.db").is_file()


def test_finish_is_idempotent_and_stores_each_constraint_once(tmp_path: Path) -> None:
    s = store(tmp_path)
    trial = claim(s)
    s.finish(trial._trial_id, outcome(0.8, True), {1: 0.5, 2: 0.7})
    s.finish(trial._trial_id, outcome(0.1, False), {1: 0.0})  # repeated: ignored
    s.record_epoch(trial._trial_id, 3, 0.9)  # after the end: ignored
    (frozen,) = s.study.get_trials()
    assert frozen.state == TrialState.COMPLETE and frozen.value == 0.8
    assert frozen.intermediate_values == {1: 0.5, 2: 0.7}
    assert frozen.system_attrs["constraints"] == [-0.1, -0.05]  # optuna-dashboard 0.21 form
    # each value once as Optuna's samplers read them (GPSampler: one model per value)
    assert frozen.constraints == {"0": -0.1, "1": -0.05}
    from drsearch.search.store import named_constraints

    assert named_constraints(frozen) == {
        "sensitivity_pdr>=0.95": -0.1,
        "min_specificity>=0.9": -0.05,
    }
    assert frozen.user_attrs["accuracy"] == 0.8


def test_best_trial_is_the_best_feasible_one(tmp_path: Path) -> None:
    s = store(tmp_path)
    for value, feasible in ((0.7, True), (0.9, False), (0.75, True)):
        s.finish(claim(s)._trial_id, outcome(value, feasible), {})
    assert s.study.best_trial.value == 0.75


def test_trials_of_a_dead_runner_become_interrupted_and_do_not_count(tmp_path: Path) -> None:
    s = store(tmp_path)
    s.finish(claim(s)._trial_id, outcome(0.7, True), {})
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    orphan, reused, parent, elsewhere, stale = (claim(s) for _ in range(5))
    here = socket.gethostname()
    owners = {
        orphan: f"{here}:{dead.pid}:0",  # a process that is gone
        reused: f"{here}:{os.getppid()}:12345.00",  # a live PID, another start: PID reused
        parent: f"{here}:{os.getppid()}:{process_start(os.getppid()):.2f}",  # still running
        elsewhere: "otherhost:1:0",  # a runner on another machine, heartbeat fresh
        stale: "otherhost:2:0",  # another machine, silent for an hour
    }
    for trial, owner in owners.items():
        s.storage.set_trial_system_attr(trial._trial_id, RUNNER_ATTR, owner)
    s.storage.set_trial_system_attr(stale._trial_id, HEARTBEAT_ATTR, time.time() - 3600)

    again = store(tmp_path)  # a re-run
    assert again.reap_interrupted() == [orphan.number, reused.number, stale.number]
    frozen = again.study.get_trials()
    assert frozen[orphan.number].state == TrialState.FAIL
    assert frozen[orphan.number].user_attrs["fail_reason"] == "interrupted"
    assert frozen[elsewhere.number].state == TrialState.RUNNING
    assert frozen[parent.number].state == TrialState.RUNNING
    counts = again.counts()
    assert (counts.complete, counts.interrupted, counts.running, counts.counted) == (1, 3, 2, 1)


def test_the_budget_is_the_studys_and_claims_stop_at_it(tmp_path: Path) -> None:
    s = store(tmp_path, budget={"n_trials": 3})
    s.set_budget(3)
    first = claim(s)
    s.finish(first._trial_id, outcome(0.5, True), {})
    claim(s), claim(s)  # two running
    assert s.claim() is None  # 1 counted + 2 running = 3
    other = store(tmp_path, budget={"n_trials": 99})  # another runner of the same study
    assert other.budget() == 3 and other.claim() is None
    other.set_budget(4)
    assert s.budget() == 4 and s.claim() is not None and s.claim() is None


def test_a_continued_study_never_replays_its_draws_and_stays_reproducible(
    tmp_path: Path,
) -> None:
    def draws(s: StudyStore, n: int) -> list[float]:
        out = []
        for _ in range(n):
            trial = claim(s)
            out.append(trial.suggest_float("x", 0.0, 1.0))
            s.finish(trial._trial_id, outcome(0.5, True), {})
        return out

    random = {"sampler": {"name": "random", "seed": 7}, "budget": {"n_trials": 100}}
    first = draws(store(tmp_path / "a", **random), 3)
    continued = draws(store(tmp_path / "a", **random), 3)  # a second `drsearch run`
    assert not set(first) & set(continued)
    in_one_go = draws(store(tmp_path / "b", **random), 6)  # the same seed, one run
    assert in_one_go == first + continued


def test_passwords_are_masked() -> None:
    url = "postgresql+psycopg2://drs:s3cret@db.example:5432/studies"
    assert masked_url(url) == "postgresql+psycopg2://drs:***@db.example:5432/studies"
    assert "s3cret" not in masked_url(url)


def test_study_is_shared_through_the_url(tmp_path: Path) -> None:
    s = store(tmp_path)
    s.finish(claim(s)._trial_id, outcome(0.6, True), {})
    loaded = optuna.load_study(study_name="s", storage=s.config.storage_url())
    assert len(loaded.trials) == 1 and loaded.direction.name == "MAXIMIZE"


def test_duplicate_parameter_sets_are_found_but_re_runs_are_not() -> None:
    from optuna.distributions import FloatDistribution
    from optuna.trial import create_trial

    from drsearch.search.runners import duplicate_params

    def trial(number: int, lr: float, **attrs: object) -> optuna.trial.FrozenTrial:
        t = create_trial(
            params={"optim.lr": lr},
            distributions={"optim.lr": FloatDistribution(1e-5, 1.0)},
            value=0.5,
            user_attrs=attrs,
        )
        t.number = number
        return t

    trials = [trial(0, 0.1), trial(1, 0.2), trial(2, 0.1), trial(3, 0.2, retry_of=1), trial(4, 0.3)]
    assert duplicate_params(trials) == [[0, 2]]
