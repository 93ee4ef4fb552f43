"""A trial as the search layer sees it: typed epoch reports, and the one rule for its end.

Every executor feeds a trial's ``EpochReport``s (repeats and replays after a resume are
idempotent) to its ``TrialTracker`` and asks it for the ``Outcome`` once the trial has ended:
COMPLETE, PRUNED or FAIL, the best epoch, the objective value, constraints and user
attributes. Reports cross Ray as flat JSON results (``to_message`` / ``from_message``)."""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any, Literal

from drsearch.clinical import Judgement, Score
from drsearch.config.study import ObjectiveConfig
from drsearch.search.objective import score


@dataclass
class EpochReport:
    """What one finished epoch tells the search layer; plain JSON, so it crosses Ray."""

    epoch: int
    value: float  # the pruning metric; undefined counts as the low end of its range
    best_epoch: int  # the trainer's best epoch so far (by the recipe's train.monitor)
    metrics: dict[str, Any]  # REPORTED_METRICS of this epoch
    lr_groups: dict[str, float]
    train_loss: float
    epoch_seconds: float
    trainable_params: int | None = None
    replayed: bool = False  # restored from the run folder on a resume, not trained now


@dataclass
class TrialEnd:
    """How the trainer's run of a trial ended."""

    status: Literal["finished", "failed"]  # finished: all epochs, or early stopping
    reason: str | None = None
    wall_seconds: float = 0.0


Message = EpochReport | TrialEnd


def to_message(item: Message) -> dict[str, Any]:
    """A report as a flat result dict for Ray Tune (``epoch`` and ``value`` always present)."""
    if isinstance(item, EpochReport):
        head = {"kind": "epoch", "epoch": item.epoch, "value": item.value}
    else:
        head = {"kind": "end", "epoch": 0, "value": float("nan")}
    return head | {"drsearch": json.dumps(asdict(item))}


def from_message(result: dict[str, Any] | None) -> Message | None:
    """The report inside a Ray result, or ``None`` for anything else."""
    if not result or "drsearch" not in result:
        return None
    data = json.loads(result["drsearch"])
    return EpochReport(**data) if result.get("kind") == "epoch" else TrialEnd(**data)


#: A trial system attribute per epoch (``drsearch:ranked:<epoch>``): the study's objective had
#: the trial stopped there (``TrialTracker.ranked``); ``fit_on: top_rung`` fits TPE on it
#: (``drsearch.search.samplers``). Trials recorded before it lack it.
RANKED_ATTR = "drsearch:ranked:"


class End(str, Enum):
    """How a trial ended (the names of Optuna's finished states; a ``str``, so it is stored,
    compared and shown as its name)."""

    COMPLETE = "COMPLETE"
    PRUNED = "PRUNED"
    FAIL = "FAIL"

    def __str__(self) -> str:
        return self.value


@dataclass
class Outcome:
    """How a trial ended, ready to be written to the study."""

    state: End
    value: float | None
    user_attrs: dict[str, Any]
    constraints: dict[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.state = End(self.state)  # read back from JSON (a paused trial's): its name


def score_attrs(s: Score) -> dict[str, Any]:
    """What a trial records of its objective: the primary metric, feasibility and why not,
    each constraint as judged (estimate, counts, lower bound, standard errors short)."""
    return {
        "objective_primary": s.primary,
        "feasible": s.feasible,
        "constraint_shortfalls": s.shortfalls,  # in standard errors
        "constraint_judgements": [judgement_record(j) for j in s.judgements],
        "trivial_value": s.trivial,
        "infeasible_reasons": s.reasons,
    }


def judgement_record(j: Judgement) -> dict[str, Any]:
    """A judged constraint as plain JSON (an infinite distance as ``None``)."""
    out = asdict(j)
    out["z"] = j.z if math.isfinite(j.z) else None
    return out


class TrialTracker:
    """One trial's curve, and the one rule for its state, best epoch and value.

    Every executor feeds it the epoch reports it receives (repeats and replays after a resume
    are idempotent) and asks it for the outcome once the trial has ended.
    """

    def __init__(self, objective: ObjectiveConfig, max_epochs: int, run_dir: Path) -> None:
        self.objective = objective
        self.max_epochs = max_epochs
        self.run_dir = run_dir
        self.curve: dict[int, EpochReport] = {}

    def on_epoch(self, report: EpochReport) -> bool:
        """Remember an epoch; ``True`` when it was not known yet."""
        new = report.epoch not in self.curve
        self.curve[report.epoch] = report
        return new

    @property
    def intermediate(self) -> dict[int, float]:
        """What the pruner sees after each epoch: the best pruning value so far. A trial is
        worth its best epoch (it is told with that), so ASHA compares trials at a rung by
        what each would be worth if stopped there, not by one noisy epoch."""
        out, best = {}, -math.inf
        for epoch, report in sorted(self.curve.items()):
            best = max(best, report.value)
            out[epoch] = best
        return out

    def ranked(self, epoch: int) -> float | None:
        """What the trial would be worth had it stopped after ``epoch``: the study's objective
        (primary minus the constraints' penalty) at its best epoch up to then, by the rule of
        its final value (``outcome``); ``None`` when a report it needs is missing."""
        report = self.curve.get(epoch)
        best = self.curve.get(report.best_epoch) if report is not None else None
        return score(self.objective, best.metrics).value if best is not None else None

    @property
    def last(self) -> EpochReport | None:
        return self.curve[max(self.curve)] if self.curve else None

    def outcome(self, end: TrialEnd | None, pruned: bool = False) -> Outcome:
        """COMPLETE (all epochs, early stopping, or ``max_epochs`` reached), PRUNED (stopped
        by the pruner before ``max_epochs``) or FAIL (with the reason)."""
        last = self.last
        attrs = self._attrs(end)
        if end is not None and end.status == "failed":
            return Outcome(End.FAIL, None, attrs | {"fail_reason": end.reason or "unknown error"})
        if last is None:
            reason = "the trial ended without reporting an epoch"
            return Outcome(End.FAIL, None, attrs | {"fail_reason": reason})
        best = self.curve.get(last.best_epoch)
        if best is None:
            reason = f"its best epoch {last.best_epoch} is missing from the reported curve"
            return Outcome(End.FAIL, None, attrs | {"fail_reason": reason})
        s = score(self.objective, best.metrics)
        attrs |= score_attrs(s)
        finished = end is not None and end.status == "finished"
        if finished or last.epoch >= self.max_epochs:
            return Outcome(End.COMPLETE, s.value, attrs, s.constraints)
        if pruned:
            # Optuna stores a pruned trial's last intermediate value as its value; say so
            stop = {
                "pruned_at_epoch": last.epoch,
                "value_at_stop": self.intermediate[last.epoch],
                "objective_so_far": s.value,
            }
            return Outcome(End.PRUNED, None, attrs | stop, s.constraints)
        reason = f"stopped at epoch {last.epoch} of {self.max_epochs} without finishing"
        return Outcome(End.FAIL, None, attrs | {"fail_reason": reason})

    def _attrs(self, end: TrialEnd | None) -> dict[str, Any]:
        last = self.last
        attrs: dict[str, Any] = {"run_dir": str(self.run_dir)}
        if last is None:
            return attrs | {"epochs_completed": 0}
        best = self.curve.get(last.best_epoch)
        attrs |= dict(best.metrics) if best is not None else {}
        return attrs | {
            "epochs_completed": last.epoch,
            "epochs_planned": self.max_epochs,
            "best_epoch": last.best_epoch,
            "wall_seconds": end.wall_seconds if end is not None and end.wall_seconds else None,
            "train_seconds": sum(r.epoch_seconds for r in self.curve.values()),
            "lr_groups": last.lr_groups,
            "trainable_params": last.trainable_params,
        }
