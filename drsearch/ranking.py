"""The one rule that names a study's best trial, below the search and inspection layers.

A trial as the rule sees it: its number, its value (higher is better; the smooth objective,
penalties included) and whether it met every constraint. The best is the feasible trial of
highest value, the earlier trial among equals; with none feasible there is no best, only
the ``closest`` (shown as such, never crowned). ``run``'s summary, ``best``, ``report``,
``export``, ``evaluate`` and the finalist stage all rank through here.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Ranked:
    """A trial as selection sees it: its number, value (higher is better) and feasibility."""

    number: int
    value: float
    feasible: bool


def by_value(trials: Iterable[Ranked]) -> list[Ranked]:
    """Best first; ties go to the earlier trial."""
    return sorted(trials, key=lambda t: (-t.value, t.number))


def search_best(trials: Sequence[Ranked]) -> Ranked | None:
    """The best feasible value (the earlier trial of equals); ``None`` when none is feasible."""
    feasible = by_value(t for t in trials if t.feasible)
    return feasible[0] if feasible else None


def closest(trials: Sequence[Ranked]) -> Ranked | None:
    """The highest value, feasible or not (what came closest when none is feasible)."""
    ordered = by_value(trials)
    return ordered[0] if ordered else None


def ranked_trials(trials: Iterable[Any]) -> list[Ranked]:
    """Optuna's complete trials (``number``, ``value``, ``user_attrs["feasible"]``) as
    ``Ranked``; trials without a value are left out."""
    return [
        Ranked(t.number, float(t.value), bool(t.user_attrs.get("feasible")))
        for t in trials
        if getattr(t.state, "name", "") == "COMPLETE" and t.value is not None
    ]
