"""Promotion-based ASHA (``pruner.mode: promotion``): trials pause at a rung and resume from
their checkpoint when they rank in its top; what is still paused at the end is pruned."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest
from optuna.trial import TrialState

from drsearch.config.study import PrunerConfig, load_study
from drsearch.search.runners import run_study
from drsearch.search.runners.common import (
    NoTrial,
    SilentProgress,
    TrialContext,
    after_epoch,
    finish_trial,
    start_trial,
)
from drsearch.search.runners.ray import _classes
from drsearch.search.scheduler import PAUSED_ATTR, RungScheduler, in_top, next_promotion, rungs
from drsearch.search.store import StudyStore
from drsearch.search.trial import EpochReport, TrialEnd, to_message
from tests.conftest import write_tiny_study
from tests.test_pruning import CURVES, _Trial, report

SPACE = "optim.lr: {type: float, low: 1.0e-4, high: 1.0e-2, log: true}\n"


def test_rungs_are_grace_times_powers_of_eta_below_max_epochs() -> None:
    assert rungs(PrunerConfig(grace_period=1, reduction_factor=2), 8) == [1, 2, 4]
    assert rungs(PrunerConfig(grace_period=2, reduction_factor=3), 20) == [2, 6, 18]
    assert rungs(PrunerConfig(grace_period=4, reduction_factor=3), 4) == []


def _study(tmp_path: Path, dataset: Path, executor: str = "local", **study: object) -> Path:
    study = {"budget": {"n_trials": len(CURVES)}} | study
    return write_tiny_study(
        tmp_path,
        dataset,
        SPACE,
        executor=executor,
        pruner={"grace_period": 1, "reduction_factor": 2, "mode": "promotion"},
        recipe_overrides={"train.epochs": 8},
        **study,
    )


def _replay(ctx, number: int) -> list[EpochReport]:  # type: ignore[no-untyped-def]
    """What the trainer reports for trial ``number``: on a resume, the epochs already done
    (replayed), then the next ones of its curve."""
    stored = ctx.trial.storage.get_trial(ctx.trial_id).intermediate_values
    done = max(stored) if ctx.resume and stored else 0
    reports = []
    for epoch, value in enumerate(CURVES[number], start=1):
        r = report(epoch, value)
        r.replayed = epoch <= done
        reports.append(r)
    return reports


def _drive_local(store: StudyStore, loaded) -> list[tuple[int, int, str]]:  # type: ignore[no-untyped-def]
    """Run the study's trials one at a time on the curves; ``(trial, epoch, decision)`` of
    every decision that was not ``continue``."""
    events = []
    while True:
        ctx = start_trial(store, loaded, SilentProgress(), threads=None)
        if ctx is NoTrial.SPENT:
            return events
        assert isinstance(ctx, TrialContext)
        for r in _replay(ctx, ctx.number):
            decision = after_epoch(store, ctx, r, SilentProgress())
            if decision != "continue":
                events.append((ctx.number, r.epoch, decision))
                break
        else:
            ctx.end = TrialEnd("finished")
        finish_trial(store, ctx, SilentProgress())


def _drive_ray(searcher, scheduler) -> list[tuple[int, int, str]]:  # type: ignore[no-untyped-def]
    """The same through the Ray executor's searcher and scheduler, one Ray trial at a time
    (a promotion is a new Ray trial of the same Optuna trial)."""
    from ray.tune.schedulers import TrialScheduler
    from ray.tune.search import Searcher

    events = []
    for i in range(100):
        ray_id = f"ray_{i}"
        config = searcher.suggest(ray_id)
        if config is Searcher.FINISHED:
            return events
        ctx = searcher.active[ray_id]
        assert config["resume"] == ctx.resume
        for r in _replay(ctx, config["trial_number"]):
            result = to_message(r)
            if scheduler.on_trial_result(None, _Trial(ray_id), result) == TrialScheduler.STOP:
                events.append((ctx.number, r.epoch, ctx.decision))
                break
        else:
            result = to_message(TrialEnd("finished"))
            scheduler.on_trial_result(None, _Trial(ray_id), result)
        searcher.on_trial_complete(ray_id, result)
    raise AssertionError("the study never finished")


@pytest.mark.parametrize("executor", ["local", "ray"])
def test_trials_pause_at_rungs_and_the_best_are_promoted(
    tmp_path: Path, tiny_dataset: Path, executor: str
) -> None:
    loaded = load_study(_study(tmp_path, tiny_dataset, executor))
    store = StudyStore(loaded.config)
    if executor == "local":
        events = _drive_local(store, loaded)
    else:
        searcher_class, scheduler_class = _classes()
        searcher = searcher_class(store, loaded, SilentProgress(), None)
        events = _drive_ray(searcher, scheduler_class(searcher))
    # rungs at epochs 1, 2, 4 (grace 1, eta 2); worked through by hand:
    # 0 pauses at 1 (alone there) and 1 at 1 (below 0); 0 is promoted (top half of 2) and
    # pauses at 2 (alone); 2 ranks first at 1 and 2, pauses at 4 (alone); 3 goes on at 1
    # (top 2 of 4) and pauses at 2 (top 1 of 3 is 2); 4 leads every rung and completes; 5
    # pauses at 1 (not in the top 3 of 6). The budget is claimed and nothing runs: the five
    # still paused are pruned at their rungs.
    assert events == [
        (0, 1, "pause"),
        (1, 1, "pause"),
        (0, 2, "pause"),
        (2, 4, "pause"),
        (3, 2, "pause"),
        (5, 1, "pause"),
    ]
    trials = store.study.get_trials()
    assert [t.state for t in trials] == [TrialState.PRUNED] * 4 + [
        TrialState.COMPLETE,
        TrialState.PRUNED,
    ]
    assert [t.user_attrs.get("pruned_at_epoch") for t in trials] == [2, 1, 4, 2, None, 1]
    assert [t.user_attrs.get("promotions") for t in trials] == [1, None, None, None, None, None]
    assert trials[4].user_attrs["objective_primary"] == pytest.approx(0.84)
    # a promoted trial's curve is whole: its replayed epoch was not recorded twice or changed
    assert trials[0].intermediate_values == {1: 0.5, 2: 0.6}
    assert store.counts().paused == 0 and store.counts().counted == len(CURVES)


@pytest.mark.parametrize("executor", ["local", "ray"])
def test_a_budget_below_eta_to_the_k_still_completes_its_leader(
    tmp_path: Path, tiny_dataset: Path, executor: str
) -> None:
    """Two trials, rungs 1, 2, 4 (eta 2): a rung of one or two never promotes past the first
    rung on its own, so every trial would end paused and then PRUNED, with nothing COMPLETE.
    Once the budget is claimed and nothing runs, the best paused trial of the highest rung is
    trained to the end instead (it never pauses again); the rest are pruned."""
    path = _study(tmp_path, tiny_dataset, executor, budget={"n_trials": 2})
    loaded = load_study(path)
    store = StudyStore(loaded.config)
    if executor == "local":
        events = _drive_local(store, loaded)
    else:
        searcher_class, scheduler_class = _classes()
        searcher = searcher_class(store, loaded, SilentProgress(), None)
        events = _drive_ray(searcher, scheduler_class(searcher))
    # by hand (CURVES[0] = 0.5, 0.6, ..., CURVES[1] = 0.3, ...): 0 pauses at 1 (alone: the
    # top half of one trial is empty), 1 pauses at 1 below it; 0 is promoted (top 1 of 2) and
    # pauses at 2 (alone). The budget is claimed, nothing runs: 0 leads rung 2 and is
    # finished; 1 is pruned at rung 1.
    assert events == [(0, 1, "pause"), (1, 1, "pause"), (0, 2, "pause")]
    first, second = store.study.get_trials()
    assert first.state == TrialState.COMPLETE and max(first.intermediate_values) == 8
    assert first.user_attrs["promotions"] == 2
    assert second.state == TrialState.PRUNED and second.user_attrs["pruned_at_epoch"] == 1
    assert store.counts().paused == 0


def test_a_paused_trial_is_never_reaped_and_counts_toward_the_budget(
    tmp_path: Path, tiny_dataset: Path
) -> None:
    loaded = load_study(_study(tmp_path, tiny_dataset))
    store = StudyStore(loaded.config)
    ctx = start_trial(store, loaded, SilentProgress(), threads=None)
    assert ctx
    assert after_epoch(store, ctx, report(1, 0.5), SilentProgress()) == "pause"
    assert finish_trial(store, ctx, SilentProgress()) is None
    # another runner (a new store: another runner id) opens the study: the paused trial has
    # no runner, yet it is waiting, not interrupted
    other = StudyStore(loaded.config)
    assert other.reap_interrupted() == []
    frozen = other.study.get_trials()[0]
    assert frozen.state == TrialState.RUNNING and frozen.system_attrs[PAUSED_ATTR] == 1
    assert other.counts().paused == 1 and other.counts().claimed == 1
    # the outcome it ends with if never promoted is kept, not yet told
    assert "pruned_at_epoch" not in frozen.user_attrs
    # alone at its rung it cannot be promoted; a second, worse trial makes it the top half
    assert next_promotion(other.study.get_trials(), 2) is None
    ctx2 = start_trial(other, loaded, SilentProgress(), threads=None)
    assert ctx2 and ctx2.number == 1 and not ctx2.resume
    assert after_epoch(other, ctx2, report(1, 0.3), SilentProgress()) == "pause"
    finish_trial(other, ctx2, SilentProgress())
    assert in_top(other.study.get_trials(), 0, 1, 2)
    promoted = start_trial(other, loaded, SilentProgress(), threads=None)
    assert promoted and promoted.number == 0 and promoted.resume
    assert promoted.params == ctx.params  # its parameters as drawn, not drawn again
    # the first runner cannot take it too
    assert RungScheduler(store, loaded.max_epochs).promote() is None


@pytest.mark.e2e
@pytest.mark.parametrize("executor", ["local", "ray"])
def test_promotion_study_trains_resumes_and_finishes_with_nothing_paused(
    tmp_path: Path,
    tiny_dataset: Path,
    monkeypatch: pytest.MonkeyPatch,
    request: pytest.FixtureRequest,
    executor: str,
) -> None:
    """Real training, from the study's folder with relative paths (Ray: two trials at a
    time): a promoted trial continues its own run from its checkpoint (one metrics log,
    epochs in order), and the study ends with every trial told."""
    if executor == "ray":
        request.getfixturevalue("ray_cluster")
    path = write_tiny_study(
        tmp_path,
        tiny_dataset,
        SPACE,
        pruner={"grace_period": 1, "reduction_factor": 2, "mode": "promotion"},
        budget={"n_trials": 4},
        recipe_overrides={"train.epochs": 3, "train.threads": 1},
        run_root="runs",
        executor=executor,
        resources={"cpus_per_trial": 1, "max_concurrent": 2},
    )
    monkeypatch.chdir(tmp_path)
    summary = run_study(load_study(Path(path.name)))
    store = StudyStore(load_study(Path(path.name)).config)
    done = store.study.get_trials()
    assert len(done) == 4 and all(t.state.is_finished() for t in done)
    promoted = [t for t in done if t.user_attrs.get("promotions")]
    # the local run is deterministic (seeded sampler, seeded training) and promotes a trial;
    # under Ray, two at a time, the order of arrival at a rung varies, and a run may end
    # with no promotion
    assert promoted or executor == "ray", "no trial was promoted"
    for t in promoted:
        log = Path(t.user_attrs["run_dir"]) / "metrics.jsonl"
        epochs = [json.loads(line)["epoch"] for line in log.read_text().splitlines()]
        assert epochs == list(range(1, t.user_attrs["epochs_completed"] + 1))
        assert t.user_attrs["epochs_completed"] > 1
    assert summary.counts.complete >= 1 and summary.counts.paused == 0
    # every ended trial took the one finish path, those pruned at their rung when the budget
    # ran out too: a dashboard note and artifacts each
    from optuna_dashboard._note import get_note_from_system_attrs

    study_attrs = store.storage.get_study_system_attrs(store.study._study_id)
    for t in done:
        assert any(k.startswith("artifacts:") for k in t.system_attrs), (t.number, t.state)
        note = get_note_from_system_attrs(study_attrs, t._trial_id)["body"]
        assert f"trial {t.number}" in note.lower(), (t.number, t.state, note)


def test_a_later_run_goes_on_with_paused_trials_or_prunes_them_when_the_mode_changed(
    tmp_path: Path, tiny_dataset: Path
) -> None:
    """A run stopped by its time limit leaves trials paused; the next run of the same study
    (promotion) goes on with them, while a study file switched to stopping ASHA prunes them
    (nothing would ever resume them) instead of leaving them to block the budget."""
    import yaml

    path = _study(tmp_path, tiny_dataset)
    loaded = load_study(path)
    store = StudyStore(loaded.config)
    for value in (0.5, 0.3):  # two trials pause at the first rung
        ctx = start_trial(store, loaded, SilentProgress(), threads=None)
        assert ctx and after_epoch(store, ctx, report(1, value), SilentProgress()) == "pause"
        finish_trial(store, ctx, SilentProgress())
    assert store.counts().paused == 2
    study = yaml.safe_load(path.read_text())
    study["pruner"]["mode"] = "stopping"
    study["budget"]["n_trials"] = 2  # spent: nothing new would start
    path.write_text(yaml.safe_dump(study))
    warnings = []

    class Progress(SilentProgress):
        def warn(self, message: str) -> None:
            warnings.append(message)

    summary = run_study(load_study(path), Progress())
    assert summary.counts.paused == 0 and summary.counts.pruned == 2
    states = [t.state for t in StudyStore(load_study(path).config).study.get_trials()]
    assert states == [TrialState.PRUNED, TrialState.PRUNED]
    # its trials were started here without a run, so their sampler is not on record: said
    assert "the earlier trials' sampler is not recorded" in warnings[0]
    assert warnings[1:] == [
        f"trial {n}: paused by promotion ASHA, pruned (pruner.mode changed)" for n in (0, 1)
    ]


def test_the_sampler_sees_a_paused_trial_as_pruned_at_its_rung(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """TPE counts paused trials toward n_startup_trials and ranks them as pruned at their
    rung (not as running trials that constant_liar scores as the worst)."""
    import optuna

    from drsearch.config.study import SamplerConfig
    from drsearch.search.samplers import _PausedAsPruned, make_sampler

    storage = optuna.storages.InMemoryStorage()
    study = optuna.create_study(storage=storage, direction="maximize")
    for value in (0.4, 0.7):  # two trials paused at rung 1
        t = study.ask()
        t.suggest_float("x", 0, 1)
        storage.set_trial_intermediate_value(t._trial_id, 1, value)
        storage.set_trial_system_attr(t._trial_id, PAUSED_ATTR, 1)
    view = _PausedAsPruned(study)
    seen = view._get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED))
    assert [t.state for t in seen] == [TrialState.PRUNED] * 2
    assert [t.intermediate_values for t in seen] == [{1: 0.4}, {1: 0.7}]
    assert view._get_trials(deepcopy=False, states=(TrialState.RUNNING,)) == []
    assert [t.state for t in study.get_trials()] == [TrialState.RUNNING] * 2  # stored as is
    # with n_startup_trials 2, the third trial is TPE's, not a random start-up draw
    used = []
    original = optuna.samplers.TPESampler._sample

    def spy(self, *args, **kwargs):  # type: ignore[no-untyped-def]
        used.append(True)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(optuna.samplers.TPESampler, "_sample", spy)
    config = SimpleNamespace(
        name="s", sampler=SamplerConfig(name="tpe", fit_on="outcomes", n_startup_trials=2, seed=0)
    )
    study.sampler = make_sampler(config)  # type: ignore[arg-type]
    study.ask().suggest_float("x", 0, 1)
    assert used


def test_a_ray_runner_waiting_for_a_promotion_never_blocks_tunes_event_loop(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import time

    from drsearch.search.runners import ray as ray_runner

    asked = []

    def waiting(*args, **kwargs):  # type: ignore[no-untyped-def]
        asked.append(time.monotonic())
        return NoTrial.WAIT

    monkeypatch.setattr(ray_runner, "start_trial", waiting)
    searcher_class, _ = _classes()
    loaded = SimpleNamespace(config=SimpleNamespace(resources=SimpleNamespace(cpus_per_trial=1)))
    searcher = searcher_class(None, loaded, SilentProgress(), None)
    started = time.monotonic()
    assert searcher.suggest("a") is None and searcher.suggest("b") is None
    assert time.monotonic() - started < 0.1  # no sleep in Tune's loop
    assert len(asked) == 1  # and the study is not asked again before WAIT_S
    searcher.ask_again_at = 0.0
    assert searcher.suggest("c") is None and len(asked) == 2
