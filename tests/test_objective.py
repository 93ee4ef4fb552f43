"""The medical-grade objective, and how epoch reports become trial outcomes."""

from __future__ import annotations

from pathlib import Path

import pytest

from drsearch.config.study import Constraint, ObjectiveConfig
from drsearch.search.objective import score
from drsearch.search.trial import EpochReport, TrialEnd, TrialTracker, from_message, to_message

OBJ = ObjectiveConfig()  # accuracy; the default constraints, judged on 90% lower bounds

#: A validation split that meets the default constraints with room (rare grades all found).
GOOD_CM = [
    [290, 10, 0, 0, 0],
    [5, 45, 0, 0, 0],
    [0, 4, 94, 2, 0],
    [0, 0, 1, 38, 1],
    [0, 0, 0, 1, 39],
]


def metrics(acc: float, s3: float | None, s4: float | None, spec: float, cm=None) -> dict:
    """Epoch metrics whose constraints are judged on ``cm`` (default: ``GOOD_CM``); the
    primary and the per-grade figures shown are the given ones."""
    return {
        "accuracy": acc,
        "qwk": 0.5,
        "sensitivity": [0.9, 0.5, 0.8, s3, s4],
        "sensitivity_severe_npdr": s3,
        "sensitivity_pdr": s4,
        "min_specificity": spec,
        "confusion_matrix": GOOD_CM if cm is None else cm,
    }


def test_feasible_trial_scores_its_primary_metric() -> None:
    s = score(OBJ, metrics(0.91, 0.95, 1.0, 0.93))
    assert s.feasible and s.value == pytest.approx(0.91) and s.reasons == []
    assert set(s.constraints) == {c.name for c in OBJ.constraints} | {"accuracy>trivial"}
    assert all(v <= 0 for v in s.constraints.values())  # Optuna: feasible
    # min - lower bound: referred PDR 40/40 has a 90% lower bound of 40 / (40 + z^2)
    z2 = 1.2815515655446004**2
    assert s.constraints["referred_pdr>=0.9"] == pytest.approx(0.9 - 40 / (40 + z2))
    assert s.constraints["accuracy>trivial"] == pytest.approx(290 / 530 * 0 + 300 / 530 - 0.91)


def test_ranking_among_infeasible_trials_follows_the_evidence() -> None:
    """More images missed ranks lower, by a fraction of a standard error per image."""
    obj = ObjectiveConfig(constraints=[Constraint(metric="referred_pdr", min=0.9)])

    def with_pdr_found(found: int) -> float:
        cm = [row[:] for row in GOOD_CM]
        cm[4] = [40 - found, 0, 0, 0, found]
        return score(obj, metrics(0.8, 0.9, found / 40, 0.9, cm)).value

    values = [with_pdr_found(k) for k in (30, 32, 34, 36, 38, 40)]
    assert values == sorted(values)
    assert values[-1] == pytest.approx(0.8)  # 40/40 certifies 0.9
    two_images = (2 / 40) / (0.09 / 40) ** 0.5  # 1.05 standard errors, 0.1 of range each
    assert values[-2] - values[-3] == pytest.approx(0.1 * two_images)


def test_qwk_range_and_undefined_metrics() -> None:
    obj = ObjectiveConfig(metric="qwk", constraints=[Constraint(metric="sensitivity_pdr", min=0.5)])
    cm = [row[:4] + [0] for row in GOOD_CM[:4]] + [[0, 0, 0, 0, 0]]  # no PDR image
    s = score(obj, metrics(0.9, 0.9, None, 0.9, cm))
    assert not s.feasible
    assert s.reasons == ["sensitivity_pdr is undefined on this split (no image to measure it on)"]
    # undefined counts as 0 of 1: (0.5 - 0) / sqrt(0.25) = 1 standard error below, plus z_0.90
    assert s.shortfalls["sensitivity_pdr>=0.5"] == pytest.approx(1 + 1.2815515655446004)
    assert s.value == pytest.approx(0.5 - 2.0 * 0.1 * (1 + 1.2815515655446004))
    assert score(ObjectiveConfig(constraints=[]), {"accuracy": None}).value == 0.0


def report(
    epoch: int, value: float, acc: float = 0.8, best: int | None = None, **kw
) -> EpochReport:
    """An epoch's report; ``best`` is the trainer's best epoch so far (default: this one)."""
    return EpochReport(
        epoch=epoch,
        value=value,
        best_epoch=epoch if best is None else best,
        metrics=metrics(acc, 0.95, 1.0, 0.95),
        lr_groups={"backbone": 1e-4, "head": 1e-3},
        train_loss=1.0,
        epoch_seconds=1.5,
        **kw,
    )


def tracker() -> TrialTracker:
    return TrialTracker(OBJ, max_epochs=4, run_dir=Path("/runs/t"))


def test_completed_trial_outcome() -> None:
    t = tracker()
    for e in (1, 2, 3):
        assert t.on_epoch(report(e, 0.5 + e / 10)) is True
    t.on_epoch(report(4, 0.9, acc=0.92))
    out = t.outcome(TrialEnd("finished", wall_seconds=7.0))
    assert out.state == "COMPLETE" and out.value == pytest.approx(0.92)
    assert t.intermediate == {1: 0.6, 2: 0.7, 3: pytest.approx(0.8), 4: 0.9}  # last included
    attrs = out.user_attrs
    assert attrs["epochs_completed"] == 4 and attrs["run_dir"] == "/runs/t"
    assert attrs["sensitivity_severe_npdr"] == 0.95 and attrs["feasible"] is True
    assert attrs["lr_groups"] == {"backbone": 1e-4, "head": 1e-3}
    assert attrs["wall_seconds"] == 7.0 and attrs["train_seconds"] == pytest.approx(6.0)


def test_stopped_early_is_pruned_but_stopped_at_max_epochs_is_complete() -> None:
    t = tracker()
    t.on_epoch(report(1, 0.3))
    t.on_epoch(report(2, 0.31))
    out = t.outcome(None, pruned=True)
    assert out.state == "PRUNED" and out.value is None
    assert out.user_attrs["pruned_at_epoch"] == 2 and t.intermediate[2] == 0.31
    t = tracker()
    for e in (1, 2, 3, 4):
        t.on_epoch(report(e, 0.9))
    assert t.outcome(None, pruned=False).state == "COMPLETE"  # pruner.max_epochs reached
    early = tracker()
    early.on_epoch(report(1, 0.9))
    assert early.outcome(TrialEnd("finished")).state == "COMPLETE"  # early stopping


def test_failure_keeps_its_reason() -> None:
    t = tracker()
    t.on_epoch(report(1, 0.3))
    out = t.outcome(TrialEnd("failed", "training loss became nan at epoch 2"))
    assert out.state == "FAIL"
    assert out.user_attrs["fail_reason"] == "training loss became nan at epoch 2"
    assert out.user_attrs["accuracy"] == 0.8  # what it reached is kept
    empty = tracker().outcome(TrialEnd("failed", "boom"))
    assert empty.state == "FAIL" and empty.user_attrs["fail_reason"] == "boom"


def test_a_trial_that_reports_no_epoch_fails_with_a_reason() -> None:
    out = tracker().outcome(TrialEnd("finished"))
    assert out.state == "FAIL"
    assert out.user_attrs["fail_reason"] == "the trial ended without reporting an epoch"


def test_best_epoch_comes_from_the_whole_curve_across_a_retry() -> None:
    """A retried attempt replays the epochs before its checkpoint and continues; the best
    epoch is the trainer's, looked up in the whole curve, not the first epoch of the retry."""
    t = tracker()
    t.on_epoch(report(1, 0.5, acc=0.5))
    t.on_epoch(report(2, 0.9, acc=0.9))  # the best
    # the worker dies; the retry replays epochs 1-2 and trains 3-4, which are worse
    t.on_epoch(report(1, 0.5, acc=0.5, replayed=True))
    t.on_epoch(report(2, 0.9, acc=0.9, replayed=True))
    t.on_epoch(report(3, 0.6, acc=0.6, best=2))
    t.on_epoch(report(4, 0.7, acc=0.7, best=2))
    out = t.outcome(TrialEnd("finished"))
    assert out.user_attrs["best_epoch"] == 2
    assert out.value == pytest.approx(0.9) and out.user_attrs["accuracy"] == 0.9
    assert t.intermediate == {1: 0.5, 2: 0.9, 3: 0.9, 4: 0.9}  # what ASHA compares: best so far


def test_reports_cross_ray_as_flat_results() -> None:
    r = report(3, 0.7, best=2, trainable_params=12)
    message = to_message(r)
    assert message["epoch"] == 3 and message["value"] == 0.7 and message["kind"] == "epoch"
    assert from_message(message) == r
    end = TrialEnd("failed", "boom", 2.5)
    assert from_message(to_message(end)) == end
    assert from_message({"epoch": 1}) is None


def test_a_pruned_trials_note_explains_the_value_the_dashboard_shows() -> None:
    from drsearch.config.study import StudyConfig
    from drsearch.search.annotations import trial_note

    config = StudyConfig(
        name="s",
        recipe={},
        search_space=Path("space.yaml"),
        resources={"gpus_per_trial": 1},
        report={"gpu_hour_price": 2.0},
    )
    t = tracker()
    t.on_epoch(report(1, 0.5, acc=0.756))
    t.on_epoch(report(2, 0.31, acc=0.7, best=1))
    out = t.outcome(TrialEnd("finished", wall_seconds=1800.0), pruned=False)
    assert out.state == "COMPLETE"  # early stopping before max_epochs
    out = t.outcome(None, pruned=True)
    out.user_attrs["wall_seconds"] = 1800.0
    note = trial_note(7, out, config)
    # the stored value is the last pruning value (Optuna's rule); the note says so in figures
    assert note.startswith("## Trial 7: PRUNED at epoch 2 of 4 (feasible so far)")
    assert "shows, 0.500, is the best accuracy up to epoch 2" in note
    assert "best epoch so far (epoch 1) was 0.756" in note
    assert "| referred_pdr | >= 0.9 | 1.000 (40/40) | 0.961 | yes | pass |" in note
    assert "| 3 severe npdr | 0.950 |" in note and "| backbone | 0.0001 |" in note
    assert "| GPU hours (cost) | 0.500 (1.00 USD) |" in note
    assert "| trial wall time | 30:00 |" in note


def test_ranked_is_the_objective_at_the_best_epoch_so_far_and_the_store_keeps_it() -> None:
    """What BOHB's model (``fit_on: top_rung``) learns from: the study's objective had the
    trial stopped after an epoch (at its best epoch up to then), penalty included, stored
    beside the pruning value only where the two differ."""
    from drsearch.config.study import StudyConfig
    from drsearch.search.runners.simulated import memory_store
    from drsearch.search.trial import RANKED_ATTR

    obj = ObjectiveConfig(constraints=[Constraint(metric="referred_pdr", min=0.9)])
    t = TrialTracker(obj, max_epochs=4, run_dir=Path("/runs/t"))
    missed = [row[:] for row in GOOD_CM]
    missed[4] = [30, 0, 0, 0, 10]  # PDR: 10/40 referred, far below 0.9
    bad = EpochReport(1, 0.9, 1, metrics(0.9, 0.9, 0.25, 0.9, missed), {}, 1.0, 1.0)
    good = EpochReport(2, 0.8, 2, metrics(0.8, 0.9, 1.0, 0.9), {}, 1.0, 1.0)
    still = EpochReport(3, 0.7, 2, metrics(0.7, 0.9, 1.0, 0.9), {}, 1.0, 1.0)  # best: epoch 2
    for r in (bad, good, still):
        t.on_epoch(r)
    assert t.intermediate == {1: 0.9, 2: 0.9, 3: 0.9}  # the pruning value: best so far
    assert t.ranked(1) == pytest.approx(score(obj, bad.metrics).value) and t.ranked(1) < 0.5
    assert t.ranked(2) == t.ranked(3) == pytest.approx(0.8)  # feasible: its accuracy
    assert t.ranked(4) is None
    out = t.outcome(TrialEnd("finished"))
    assert out.value == t.ranked(3)  # the final value by the same rule

    config = StudyConfig.model_validate(
        {"name": "r", "recipe": "r.yaml", "search_space": "s.yaml", "objective": obj.model_dump()}
    )
    store = memory_store(config)
    trial_id = store.study.ask()._trial_id
    for epoch in (1, 2, 3):
        store.record_epoch(trial_id, epoch, t.intermediate[epoch], t.ranked(epoch))
    frozen = store.storage.get_trial(trial_id)
    assert frozen.intermediate_values == {1: 0.9, 2: 0.9, 3: 0.9}
    assert frozen.system_attrs == {
        f"{RANKED_ATTR}{e}": pytest.approx(t.ranked(e)) for e in (1, 2, 3)
    }
    store.record_epoch(trial_id, 4, 0.5, None)  # a report missing: the pruning value alone
    frozen = store.storage.get_trial(trial_id)
    assert frozen.intermediate_values[4] == 0.5 and f"{RANKED_ATTR}4" not in frozen.system_attrs
