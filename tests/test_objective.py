"""The medical-grade objective, and how payloads become trial outcomes."""

from __future__ import annotations

from pathlib import Path

import pytest

from drsearch.config.study import Constraint, ObjectiveConfig
from drsearch.objective import TrialTracker, score

OBJ = ObjectiveConfig()  # accuracy; severe NPDR >= 0.90, PDR >= 0.95, min specificity >= 0.90


def metrics(acc: float, s3: float | None, s4: float | None, spec: float) -> dict:
    return {
        "accuracy": acc,
        "qwk": 0.5,
        "sensitivity": [0.9, 0.5, 0.8, s3, s4],
        "sensitivity_severe_npdr": s3,
        "sensitivity_pdr": s4,
        "min_specificity": spec,
    }


def test_feasible_trial_scores_its_primary_metric() -> None:
    s = score(OBJ, metrics(0.91, 0.95, 1.0, 0.93))
    assert s.feasible and s.value == pytest.approx(0.91)
    assert s.constraints == {
        "sensitivity_severe_npdr>=0.9": pytest.approx(-0.05),
        "sensitivity_pdr>=0.95": pytest.approx(-0.05),
        "min_specificity>=0.9": pytest.approx(-0.03),
    }


def test_penalty_is_range_plus_shortfalls() -> None:
    s = score(OBJ, metrics(0.95, 0.80, 0.90, 0.93))  # short by 0.10 and 0.05
    assert not s.feasible
    assert s.shortfalls["sensitivity_severe_npdr>=0.9"] == pytest.approx(0.10)
    assert s.value == pytest.approx(0.95 - (1.0 + 0.15))


def test_every_infeasible_trial_ranks_below_every_feasible_one() -> None:
    worst_feasible = score(OBJ, metrics(0.0, 0.9, 0.95, 0.9)).value
    best_infeasible = score(OBJ, metrics(1.0, 0.9, 0.95, 0.8999)).value
    assert best_infeasible < worst_feasible
    slightly = score(OBJ, metrics(0.8, 0.85, 0.95, 0.95)).value
    badly = score(OBJ, metrics(0.8, 0.2, 0.95, 0.95)).value
    assert badly < slightly


def test_qwk_range_and_undefined_metrics() -> None:
    obj = ObjectiveConfig(metric="qwk", constraints=[Constraint(metric="sensitivity_pdr", min=0.5)])
    s = score(obj, metrics(0.9, 0.9, None, 0.9))  # no PDR image in validation
    assert not s.feasible and s.shortfalls == {"sensitivity_pdr>=0.5": 0.5}
    assert s.value == pytest.approx(0.5 - (2.0 + 0.5))
    assert score(ObjectiveConfig(constraints=[]), {"accuracy": None}).value == 0.0


def payload(epoch: int, value: float, acc: float = 0.8, **extra: object) -> dict:
    return {
        "epoch": epoch,
        "value": value,
        "best_epoch": epoch,
        "best": metrics(acc, 0.95, 1.0, 0.95),
        "lr_groups": {"backbone": 1e-4, "head": 1e-3},
        "wall_seconds": 1.5 * epoch,
        **extra,
    }


def tracker() -> TrialTracker:
    return TrialTracker(OBJ, max_epochs=4, run_dir=Path("/runs/t"))


def test_completed_trial_outcome() -> None:
    t = tracker()
    for e in (1, 2, 3):
        assert t.on_epoch(payload(e, 0.5 + e / 10)) == (e, pytest.approx(0.5 + e / 10))
    out = t.outcome(payload(4, 0.9, acc=0.92, drsearch_done=True), stopped_by_scheduler=False)
    assert out.state == "COMPLETE" and out.value == pytest.approx(0.92)
    assert t.intermediate == {1: 0.6, 2: 0.7, 3: pytest.approx(0.8), 4: 0.9}  # last included
    attrs = out.user_attrs
    assert attrs["epochs_completed"] == 4 and attrs["run_dir"] == "/runs/t"
    assert attrs["sensitivity_severe_npdr"] == 0.95 and attrs["feasible"] is True
    assert attrs["lr_groups"] == {"backbone": 1e-4, "head": 1e-3}


def test_stopped_early_is_pruned_but_stopped_at_max_epochs_is_complete() -> None:
    t = tracker()
    t.on_epoch(payload(1, 0.3))
    out = t.outcome(payload(2, 0.31), stopped_by_scheduler=True)
    assert out.state == "PRUNED" and out.value is None
    assert out.user_attrs["pruned_at_epoch"] == 2 and t.intermediate[2] == 0.31
    t = tracker()
    out = t.outcome(payload(4, 0.9), stopped_by_scheduler=True)
    assert out.state == "COMPLETE"


def test_failure_keeps_its_reason() -> None:
    t = tracker()
    t.on_epoch(payload(1, 0.3))
    out = t.outcome(
        payload(1, 0.3, drsearch_failed="training loss became nan at epoch 2"),
        stopped_by_scheduler=False,
    )
    assert out.state == "FAIL"
    assert out.user_attrs["fail_reason"] == "training loss became nan at epoch 2"
    empty = tracker().outcome(
        {"epoch": 0, "value": float("nan"), "drsearch_failed": "boom"}, stopped_by_scheduler=False
    )
    assert empty.state == "FAIL" and empty.user_attrs["fail_reason"] == "boom"
