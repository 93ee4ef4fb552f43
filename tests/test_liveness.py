"""Runner identity, liveness and every way a runner lets go of its trials."""

from __future__ import annotations

import socket
import time
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from drsearch.search import liveness
from drsearch.search.liveness import HEARTBEAT_ATTR, RUNNER_ATTR, RunnerId, db_now
from drsearch.search.scheduler import PAUSED_ATTR, RungScheduler
from drsearch.search.store import RECOVERED, StudyStore
from drsearch.search.trial import RANKED_ATTR
from tests.test_storage import claim, outcome, store


def _owned_by(
    s: StudyStore, trial: optuna.Trial, owner: RunnerId | str, beat: float | None
) -> None:
    s.storage.set_trial_system_attr(trial._trial_id, RUNNER_ATTR, str(owner))
    s.storage.set_trial_system_attr(trial._trial_id, HEARTBEAT_ATTR, beat)


def test_a_runner_of_another_boot_pid_namespace_or_host_is_judged_rightly(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    s = store(tmp_path)
    me = s.runner
    now = db_now(s.storage)
    rebooted, container, container_silent, unreadable, elsewhere = (claim(s) for _ in range(5))
    # the same host name and another boot id, silent for ten minutes: an earlier boot of
    # this machine (dead), even with this process's PID and start time
    rebooted_id = RunnerId(me.host, me.pid, me.started, "0" * 12, me.pidns, "x")
    _owned_by(s, rebooted, rebooted_id, now - 600)
    # a container with the same hostname and another PID namespace: its PID means nothing
    # here, so its heartbeat decides
    other_ns = RunnerId(me.host, 1, 0.0, me.boot, "4026531836x", "y")
    _owned_by(s, container, other_ns, now - 5)
    _owned_by(s, container_silent, other_ns, now - 3600)
    # a process of this machine that exists but cannot be read (AccessDenied): not proof of
    # death; the heartbeat decides
    _owned_by(s, unreadable, RunnerId(me.host, 1, 123.0, me.boot, me.pidns, "z"), now - 5)
    # another host whose own clock is an hour ahead: the database's clock decides
    _owned_by(s, elsewhere, RunnerId("farhost", 7, 1.0, "b" * 12, "1", "w"), now - 5)
    real = liveness.process_start

    def denied(pid: int) -> float | None:
        if pid == 1:
            raise PermissionError(pid)
        return real(pid)

    monkeypatch.setattr(liveness, "process_start", denied)
    monkeypatch.setattr(time, "time", lambda: now + 3600)  # a host clock an hour off
    again = store(tmp_path)
    assert again.reap_interrupted() == [rebooted.number, container_silent.number]
    states = {t.number: t.state for t in again.study.get_trials()}
    assert states[container.number] == states[unreadable.number] == TrialState.RUNNING
    assert states[elsewhere.number] == TrialState.RUNNING


def test_the_same_host_name_with_another_boot_id_is_judged_by_its_heartbeat(
    tmp_path: Path,
) -> None:
    """A cloned VM or container keeps the host name and has another boot id, as an earlier
    boot of this machine has: only the heartbeat tells a live clone from a dead process."""
    s = store(tmp_path)
    me = s.runner
    now = db_now(s.storage)
    clone, clone_silent, never_beat = (claim(s) for _ in range(3))
    for trial, token, beat in ((clone, "c", now - 5), (clone_silent, "d", now - 3600),
                               (never_beat, "e", None)):  # fmt: skip
        # the same host name, PID namespace, even PID and start time: only the boot differs
        _owned_by(s, trial, RunnerId(me.host, me.pid, me.started, "f" * 12, me.pidns, token), beat)
    again = store(tmp_path)
    assert liveness.runner_alive(str(RunnerId(me.host, 1, 0.0, "f" * 12, "", "c")), me, 5.0)
    assert again.reap_interrupted() == [clone_silent.number, never_beat.number]
    states = {t.number: t.state for t in again.study.get_trials()}
    assert states[clone.number] == TrialState.RUNNING  # a 5-second-old beat: it runs


def test_a_zombie_runner_is_dead_though_its_start_time_answers(tmp_path: Path) -> None:
    """A runner killed but not yet reaped by its parent: its process entry (and start time)
    remains, its trials are interrupted, whatever heartbeat they carry."""
    import os
    import subprocess
    import sys

    import psutil

    s = store(tmp_path)
    me = s.runner
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    try:
        # wait for it to exit, leaving it unreaped (a zombie): no poll, no sleep
        os.waitid(os.P_PID, child.pid, os.WEXITED | os.WNOWAIT)
        zombie = psutil.Process(child.pid)
        assert zombie.status() == psutil.STATUS_ZOMBIE
        owner = RunnerId(me.host, child.pid, zombie.create_time(), me.boot, me.pidns, "zz")
        assert not liveness.runner_alive(str(owner), me, heartbeat_age=1.0)
        trial = claim(s)
        _owned_by(s, trial, owner, db_now(s.storage))  # a fresh beat: the process decides
        assert store(tmp_path).reap_interrupted() == [trial.number]
        frozen = s.storage.get_trial(trial._trial_id)
        assert frozen.state == TrialState.FAIL
        assert frozen.user_attrs["fail_reason"] == "interrupted"
    finally:
        child.wait()  # reaped now


def test_a_trial_beats_as_soon_as_it_is_claimed(tmp_path: Path) -> None:
    """No window without a heartbeat: a runner on another machine that dies right after its
    claim leaves a beat that goes stale, never a trial that waits forever."""
    s = store(tmp_path)
    trial = claim(s)
    attrs = s.storage.get_trial(trial._trial_id).system_attrs
    assert attrs[RUNNER_ATTR] == str(s.runner) and HEARTBEAT_ATTR in attrs


def test_the_heartbeat_is_written_on_the_databases_clock(tmp_path: Path) -> None:
    s = store(tmp_path)
    trial = claim(s)
    beat = s.storage.get_trial(trial._trial_id).system_attrs[HEARTBEAT_ATTR]
    assert abs(beat - db_now(s.storage)) < 2.0
    assert abs(db_now(s.storage) - time.time()) < 5.0  # SQLite's clock is this host's, in UTC


def test_a_closed_runner_of_this_process_is_reaped_by_the_next(tmp_path: Path) -> None:
    first = store(tmp_path)
    held = claim(first)
    second = store(tmp_path)  # the same process, another runner: the first is still open
    assert second.reap_interrupted() == []
    first.close()  # left without letting go (a crash in between): now it is gone
    assert second.reap_interrupted() == [held.number]
    assert RunnerId.parse(str(first.runner)) == first.runner
    assert RunnerId.parse(f"{socket.gethostname()}:12:3.50") == RunnerId(
        socket.gethostname(), 12, 3.5
    )  # the older form


def test_a_runner_error_lets_go_of_its_trials_and_the_budget_finishes(
    tmp_path: Path, tiny_dataset: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from drsearch.config.study import load_study
    from drsearch.search.runners import local, run_study
    from tests.conftest import write_tiny_study

    path = write_tiny_study(
        tmp_path, tiny_dataset, "optim.lr: {type: float, low: 0.001, high: 0.01}",
        budget={"n_trials": 2}, recipe_overrides={"train.epochs": 2}, pruner={"enabled": False},
    )  # fmt: skip
    real = local._run_one

    def broken(store, loaded, ctx, progress):  # type: ignore[no-untyped-def]
        raise OSError("database is locked")  # what a storage error in finish looks like

    monkeypatch.setattr(local, "_run_one", broken)
    with pytest.raises(OSError, match="database is locked"):
        run_study(load_study(path))
    (trial,) = optuna.load_study(
        study_name="tiny", storage=f"sqlite:///{tmp_path / 'runs' / 'tiny.db'}"
    ).get_trials()
    assert trial.state == TrialState.FAIL and trial.user_attrs["fail_reason"] == "interrupted"
    assert "OSError: database is locked" in trial.user_attrs["interrupted_by"]
    monkeypatch.setattr(local, "_run_one", real)
    summary = run_study(load_study(path))  # the same process: nothing is left RUNNING
    assert (summary.counts.complete, summary.counts.interrupted, summary.counts.running) == (
        2,
        1,
        0,
    )


def test_an_interrupted_promoted_trial_returns_to_its_rung(tmp_path: Path) -> None:
    s = store(tmp_path, pruner={"mode": "promotion", "grace_period": 1, "reduction_factor": 2})
    a, b = claim(s), claim(s)
    for trial, value in ((a, 0.9), (b, 0.5)):
        s.record_epoch(trial._trial_id, 1, value)
    rungs = RungScheduler(s, max_epochs=4)
    rungs.pause(b._trial_id, 1, outcome(0.5, True))
    rungs.pause(a._trial_id, 1, outcome(0.9, True))
    promoted = rungs.promote()
    assert promoted is not None and promoted.number == a.number
    assert s.interrupt_own() == [a.number]  # Ctrl-C while it trains past its rung
    frozen = s.storage.get_trial(a._trial_id)
    assert frozen.state == TrialState.RUNNING and frozen.system_attrs[PAUSED_ATTR] == 1
    assert s.counts().paused == 2 and s.counts().interrupted == 0


def test_a_result_that_arrives_after_its_trial_was_reaped_is_kept(tmp_path: Path) -> None:
    s = store(tmp_path)
    trial = claim(s)
    s.record_epoch(trial._trial_id, 1, 0.6, 0.4)  # 0.4: its objective there (a penalty)
    s.storage.set_trial_user_attr(trial._trial_id, "fail_reason", "interrupted")
    s.storage.set_trial_state_values(trial._trial_id, TrialState.FAIL)  # reaped meanwhile
    done = s.finish(trial._trial_id, outcome(0.8, True), {1: 0.6, 2: 0.8})
    assert done.how == RECOVERED
    trials = s.study.get_trials()
    new = trials[done.number]
    assert new.state == TrialState.COMPLETE and new.value == 0.8
    assert new.params == trials[trial.number].params and new.intermediate_values == {1: 0.6, 2: 0.8}
    assert new.user_attrs["recovered_from"] == trial.number
    assert new.system_attrs[f"{RANKED_ATTR}1"] == 0.4  # what BOHB's model fits, kept too
    assert "fail_reason" not in new.user_attrs
    again = s.finish(trial._trial_id, outcome(0.8, True), {})  # told twice: stored once
    assert (again.how, again.number) == ("already finished", done.number)
    assert s.counts().complete == 1 and s.counts().counted == 1
