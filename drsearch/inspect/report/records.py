"""A study -> plain records for the report (no plotly here, so this is tested on its own).

The medical-grade checklist (``drsearch.clinical``) is judged on the best trial, with fixed
clinical thresholds independent of the study's own constraints.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from drsearch.clinical import CheckItem, checklist
from drsearch.config.study import TEST_LOG_ATTR, LoadedStudy
from drsearch.io import read_jsonl


@dataclass
class TrialRow:
    number: int
    state: str
    value: float | None
    params: dict[str, Any]
    curve: dict[int, float]  # epoch -> pruning metric
    wall_seconds: float
    epochs: int
    feasible: bool | None
    attrs: dict[str, Any]


@dataclass
class Compute:
    trial_hours: float
    pruned_hours: float
    saved_hours: float  # estimated epochs pruned trials did not run
    gpu_hours: float
    cost: float | None
    currency: str


@dataclass
class LrPoint:
    epoch: int
    group: str
    lr: float
    where: str  # "first" or "last" step of the epoch


#: fANOVA importances on fewer complete trials than this are noise: the report hides them.
MIN_IMPORTANCE_TRIALS = 8


@dataclass
class ReportRecords:
    study: str
    metric: str
    pruning_metric: str
    constraints: list[dict[str, Any]]
    trials: list[TrialRow]
    history: list[tuple[int, float, float, bool]]  # number, value, best so far, feasible
    importances: dict[str, float]
    parallel_params: list[str]
    top: list[TrialRow]
    best: TrialRow | None
    best_feasible: bool
    best_curve: list[tuple[int, float | None, float | None]]  # epoch, train acc, val acc
    best_lr: list[LrPoint]
    checklist: list[CheckItem]
    compute: Compute
    notes: list[str] = field(default_factory=list)
    #: ``drsearch evaluate`` summaries by tag (``trial7``, ``top3-tta``): held-out test figures
    evaluations: dict[str, dict[str, Any]] = field(default_factory=dict)
    #: the finalist stage's record (``search.selection``): search and confirmed values
    confirm: dict[str, Any] | None = None
    best_source: str = "search"  # "finalists": the best is the crowned finalist
    #: every use of the held-out test set: what was evaluated, when
    test_uses: list[dict[str, Any]] = field(default_factory=list)


def build_records(
    loaded: LoadedStudy,
    study: optuna.Study,
    chosen: int | None = None,
    finalists: dict[str, Any] | None = None,
    no_winner: bool = False,
) -> ReportRecords:
    """Everything the report shows, as plain data. ``chosen``: the study's best as the search
    layer names it (the crowned finalist); unset, the best feasible trial of the search.
    ``finalists``: the finalist stage's record; ``no_winner``: it named none (the search's
    best is then shown as what did not hold up)."""
    cfg = loaded.config
    frozen = [t for t in study.get_trials(deepcopy=False) if t.state.is_finished()]
    rows = [_row(t) for t in frozen]
    complete = [r for r in rows if r.state == "COMPLETE" and r.value is not None]
    best, best_feasible = _best(study, complete, chosen)
    if chosen is not None and finalists is not None:
        best_feasible = True  # the crowned finalist met the constraints on its confirmation
    if no_winner:
        best_feasible = False
    history = _history(complete)
    best_log = _run_log(best)
    return ReportRecords(
        study=cfg.name,
        metric=cfg.objective.metric,
        pruning_metric=cfg.pruner.metric,
        constraints=[c.model_dump() | {"name": c.name} for c in cfg.objective.constraints],
        trials=rows,
        history=history,
        importances=_importances(study, complete),
        parallel_params=_shared_params(complete),
        top=sorted(complete, key=lambda r: -math.inf if r.value is None else r.value, reverse=True)[
            : cfg.report.top_trials
        ],
        best=best,
        best_feasible=best_feasible,
        best_curve=[(r["epoch"], r["train"]["accuracy"], r["val"]["accuracy"]) for r in best_log],
        best_lr=_lr_points(best_log),
        checklist=checklist(best.attrs, best_log) if best else [],
        compute=_compute(rows, loaded),
        notes=_notes(rows, best, best_feasible),
        evaluations={
            k.removeprefix("evaluation:"): v
            for k, v in study.user_attrs.items()
            if k.startswith("evaluation:")
        },
        confirm=finalists,
        test_uses=list(study.user_attrs.get(TEST_LOG_ATTR) or []),
        best_source="no winner" if no_winner else "finalists" if chosen is not None else "search",
    )


def _row(t: FrozenTrial) -> TrialRow:
    attrs = dict(t.user_attrs)
    return TrialRow(
        number=t.number,
        state=t.state.name,
        value=t.value if t.state == TrialState.COMPLETE else None,
        params=dict(t.params),
        curve={int(k): float(v) for k, v in sorted(t.intermediate_values.items())},
        wall_seconds=float(attrs.get("wall_seconds") or 0.0),
        epochs=int(attrs.get("epochs_completed") or 0),
        feasible=attrs.get("feasible"),
        attrs=attrs,
    )


def _best(
    study: optuna.Study, complete: list[TrialRow], chosen: int | None
) -> tuple[TrialRow | None, bool]:
    if chosen is not None:
        row = next((r for r in complete if r.number == chosen), None)
        if row is not None:
            return row, bool(row.feasible)
    from drsearch.ranking import closest, ranked_trials, search_best

    trials = ranked_trials(study.get_trials(deepcopy=False))
    for found, feasible in ((search_best(trials), True), (closest(trials), False)):
        row = next((r for r in complete if found is not None and r.number == found.number), None)
        if row is not None:
            return row, feasible
    return None, False


def _history(complete: list[TrialRow]) -> list[tuple[int, float, float, bool]]:
    out, best = [], -math.inf
    for r in sorted(complete, key=lambda r: r.number):
        best = max(best, -math.inf if r.value is None else r.value)
        out.append((r.number, float(r.value or 0.0), best, bool(r.feasible)))
    return out


def importance_evaluator() -> optuna.importance.FanovaImportanceEvaluator:
    """Optuna 5's default evaluator is PED-ANOVA; the report promises fANOVA, seeded."""
    return optuna.importance.FanovaImportanceEvaluator(seed=0)


def _importances(study: optuna.Study, complete: list[TrialRow]) -> dict[str, float]:
    """fANOVA importances of the parameters every complete trial has; empty below
    ``MIN_IMPORTANCE_TRIALS`` complete trials or when they cannot be computed."""
    params = _shared_params(complete)
    if len(complete) < MIN_IMPORTANCE_TRIALS or not params:
        return {}
    try:
        found = optuna.importance.get_param_importances(
            study, evaluator=importance_evaluator(), params=params
        )
        return dict(found)
    except (RuntimeError, ValueError, ZeroDivisionError):  # constant trials
        return {}


def _shared_params(complete: list[TrialRow]) -> list[str]:
    """Parameters every complete trial has (conditional ones are left out of the plot)."""
    if not complete:
        return []
    shared = set(complete[0].params)
    for r in complete[1:]:
        shared &= set(r.params)
    return [p for p in complete[0].params if p in shared]


def _run_log(row: TrialRow | None) -> list[dict[str, Any]]:
    if row is None or not row.attrs.get("run_dir"):
        return []
    log = Path(str(row.attrs["run_dir"])) / "metrics.jsonl"
    if not log.is_file():
        return []
    return read_jsonl(log)


def _lr_points(log: list[dict[str, Any]]) -> list[LrPoint]:
    points = []
    for record in log:
        for where, key in (("first", "lr_first"), ("last", "lr")):
            for group, lr in (record.get(key) or {}).items():
                points.append(LrPoint(record["epoch"], group, float(lr), where))
    return points


def _compute(rows: list[TrialRow], loaded: LoadedStudy) -> Compute:
    cfg = loaded.config
    hours = sum(r.wall_seconds for r in rows) / 3600
    pruned = [r for r in rows if r.state == "PRUNED"]
    saved = (
        sum((loaded.max_epochs - r.epochs) * r.wall_seconds / max(r.epochs, 1) for r in pruned)
        / 3600
    )
    gpu_hours, cost = cfg.compute_cost(hours * 3600)
    return Compute(
        trial_hours=hours,
        pruned_hours=sum(r.wall_seconds for r in pruned) / 3600,
        saved_hours=saved,
        gpu_hours=gpu_hours,
        cost=cost,
        currency=cfg.report.currency,
    )


def _notes(rows: list[TrialRow], best: TrialRow | None, feasible: bool) -> list[str]:
    notes = []
    if best is None:
        notes.append("No trial has completed yet.")
    elif not feasible:
        notes.append(
            f"No complete trial meets the study's constraints; trial {best.number} "
            "is shown as the best infeasible one."
        )
    failed = [r for r in rows if r.state == "FAIL"]
    if failed:
        notes.append(
            f"{len(failed)} trial(s) failed, e.g. trial {failed[0].number}: "
            f"{failed[0].attrs.get('fail_reason', 'unknown')}"
        )
    return notes
