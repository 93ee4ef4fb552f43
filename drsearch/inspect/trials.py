"""A study's trials as rows: what ``drsearch trials`` lists and ``drsearch best`` shows."""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import asdict, dataclass, field
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from drsearch.states import Status, epochs_done, paused_at, retried_numbers, status

SORTS = ("number", "value", "duration")


@dataclass
class TrialLine:
    number: int
    state: str
    value: float | None
    feasible: bool | None
    shortfalls: dict[str, float]  # constraint -> standard errors short of its rule (0: met)
    epochs: int | None
    best_epoch: int | None
    seconds: float | None
    params: dict[str, Any]
    note: str = ""  # why it failed, where it was pruned, which trial it re-runs
    metrics: dict[str, Any] = field(default_factory=dict)
    below_trivial: bool = False  # its primary metric does not beat the trivial model

    def as_json(self) -> dict[str, Any]:
        return asdict(self)


_METRICS = ("accuracy", "qwk", "sensitivity_severe_npdr", "sensitivity_pdr", "min_specificity")


def trial_line(t: FrozenTrial, retried: Collection[int] = ()) -> TrialLine:
    """One trial as a row; ``retried``: the study's ``states.retried_numbers``."""
    a = t.user_attrs
    state = status(t, retried)
    if t.state == TrialState.FAIL:
        note = str(a.get("fail_reason") or "")
        note += " (queued again)" if state == Status.INTERRUPTED and t.number in retried else ""
    elif t.state == TrialState.PRUNED:
        note = f"pruned at epoch {a.get('pruned_at_epoch')}"
    elif state == Status.PAUSED:
        note = f"paused at the rung of epoch {paused_at(t)}, waiting for a promotion"
    else:
        note = ""
    if "retry_of" in a:
        note = f"re-run of {a['retry_of']}" + (f"; {note}" if note else "")
    return TrialLine(
        number=t.number,
        state=state.value.upper(),
        value=t.value if t.state == TrialState.COMPLETE else None,
        feasible=a.get("feasible"),
        shortfalls=dict(a.get("constraint_shortfalls") or {}),
        epochs=epochs_done(t),
        best_epoch=a.get("best_epoch"),
        seconds=a.get("wall_seconds"),
        params=dict(t.params),
        note=note,
        below_trivial=any("trivial model" in r for r in a.get("infeasible_reasons") or []),
        metrics={k: a.get(k) for k in _METRICS if k in a},
    )


def trial_lines(study: optuna.Study, sort: str = "number") -> list[TrialLine]:
    """Every trial of the study; ``value`` sorts best first (trials without one last)."""
    trials = study.get_trials(deepcopy=False)
    retried = retried_numbers(trials)
    lines = [trial_line(t, retried) for t in trials]
    if sort == "value":
        lines.sort(key=lambda r: (r.value is None, -(r.value or 0.0), r.number))
    elif sort == "duration":
        lines.sort(key=lambda r: (r.seconds is None, -(r.seconds or 0.0), r.number))
    return lines


def best_trial(study: optuna.Study) -> FrozenTrial | None:
    """The search's best feasible complete trial (``ranking.search_best``), if any."""
    from drsearch.ranking import ranked_trials, search_best

    best = search_best(ranked_trials(study.get_trials(deepcopy=False)))
    return None if best is None else study.trials[best.number]
