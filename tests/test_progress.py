"""The live view of a study (`drsearch run` without --quiet): what its line says."""

from __future__ import annotations

import io
from types import SimpleNamespace

import pytest
from rich.console import Console

from drsearch.cli import progress as live


def _view(monkeypatch: pytest.MonkeyPatch, n_trials: int = 4) -> live.RichStudyProgress:
    clock = SimpleNamespace(now=1000.0)
    monkeypatch.setattr(live.time, "monotonic", lambda: clock.now)
    view = live.RichStudyProgress(n_trials, max_epochs=10, console=Console(file=io.StringIO()))
    view.clock = clock  # type: ignore[attr-defined]
    return view


def _line(view: live.RichStudyProgress) -> str:
    return view._render().plain.splitlines()[0]


def _done(number: int, value: float, feasible: bool) -> SimpleNamespace:
    attrs = {"feasible": feasible, "accuracy": value}
    return SimpleNamespace(state="COMPLETE", value=value, user_attrs=attrs)


def test_an_eta_before_any_trial_ends_is_an_upper_bound_from_epochs(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    view = _view(monkeypatch)
    assert "left" not in _line(view)  # nothing measured yet: no guess
    view.trial_started(0, {})
    view.trial_started(1, {})
    view.clock.now += 60  # type: ignore[attr-defined]
    view.trial_epoch(0, 1, 0.5)
    view.trial_epoch(1, 1, 0.5)
    view.trial_epoch(1, 2, 0.5)
    # 3 epochs in 60 s; left: trials 0 and 1 (9 + 8 epochs) and 2 unstarted (2 x 10) = 37
    assert "at most about 12:20 left" in _line(view)
    view.trial_epoch(1, 2, 0.5)  # a replayed epoch (a promoted trial) is not new work
    assert view.epochs_done == 3


def test_the_best_shown_is_feasible_or_says_none_is(monkeypatch: pytest.MonkeyPatch) -> None:
    view = _view(monkeypatch)
    for n in (0, 1):
        view.trial_started(n, {})
    view.trial_finished(0, _done(0, 0.9, feasible=False))
    assert "best none feasible yet; closest 0.9000 (trial 0)" in _line(view)
    view.trial_finished(1, _done(1, 0.7, feasible=True))
    assert "best 0.7000 (trial 1, feasible)" in _line(view)
