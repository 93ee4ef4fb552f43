"""A run's time limit (``budget.time_limit_s``): when it starts, when it is reached, and what
the rung scheduler does then.

The limit counts from the start of the run's first trial, not from the command's start (the
imports, Ray's start-up and the data checks are not the search's time). Once it is reached no
new trial starts and no paused trial is promoted, except one: when nothing runs any more and
no trial has trained to the end past the highest rung that holds paused trials, the best
paused trial of that rung (``scheduler.end_leader``) is promoted to train to the end, so a
study that trained anything ends with a complete best trial instead of a row of paused ones.
It trains past the limit; ``budget.finish_grace_s`` caps how far (its time to finish is
estimated from its own epochs so far), and when it would need more, it stays paused and the
study's best is named, provisionally, by its value at the highest rung (``selection.
provisional_best``), with that said. Trials still paused stay paused: the next ``drsearch
run`` goes on with them.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from optuna.trial import FrozenTrial

from drsearch.states import paused_at


@dataclass
class Deadline:
    """This run's time limit and what happened at it."""

    limit_s: float | None
    grace_s: float | None = None  # how far past the limit the leader may train to finish
    max_epochs: int = 0
    first_start: float | None = None  # time.time() when this run's first trial started
    reached_at: float | None = None
    finished: list[int] = field(default_factory=list)  # leaders trained to the end past it
    not_finished: str | None = None  # why the leader stayed paused
    ended: float | None = None  # time.time() when the run's executor returned

    @property
    def past_limit_s(self) -> float | None:
        """How long past the limit the run trained (finishing the leader, or trials that were
        running at the limit going on to their next rung or their end)."""
        at = self.at
        if self.reached_at is None or at is None or self.ended is None:
            return None
        return max(0.0, self.ended - at)

    def trial_started(self) -> None:
        if self.first_start is None:
            self.first_start = time.time()

    @property
    def at(self) -> float | None:
        if self.limit_s is None or self.first_start is None:
            return None
        return self.first_start + self.limit_s

    def passed(self) -> bool:
        """Whether the limit is reached (remembered: it stays reached)."""
        if self.reached_at is not None:
            return True
        at = self.at
        if at is None or time.time() < at:
            return False
        self.reached_at = time.time()
        return True

    def needs(self, leader: FrozenTrial) -> float | None:
        """Seconds the paused ``leader`` needs to train to the end, from its own epochs so far;
        ``None`` when it has no time on record."""
        epoch = paused_at(leader) or 0
        seconds = leader.user_attrs.get("wall_seconds")
        if not epoch or seconds is None:
            return None
        return float(seconds) / epoch * max(self.max_epochs - epoch, 0)

    def fits(self, leader: FrozenTrial) -> bool:
        """Whether the leader may be finished past the limit (``grace_s`` unset: always)."""
        if self.grace_s is None:
            return True
        need = self.needs(leader)
        at = self.at
        if need is None or at is None:
            self.not_finished = f"trial {leader.number}'s time to finish is unknown"
            return False
        if time.time() + need <= at + self.grace_s:
            return True
        self.not_finished = (
            f"trial {leader.number}, the leader of rung {paused_at(leader)}, would need about "
            f"{need:.0f} s to finish, past budget.finish_grace_s ({self.grace_s:g} s)"
        )
        return False
