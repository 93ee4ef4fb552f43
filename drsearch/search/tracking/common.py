"""What every tracking backend shares: the tags runs are found by, the protocol a backend
speaks, where a study is tracked, and what a trial's run should hold by the study's record
(its end state, end fields and epochs)."""

from __future__ import annotations

import json
import math
import os
import re
from pathlib import Path
from typing import Any, Protocol

from drsearch.config.study import LoadedStudy
from drsearch.search.scheduler import PAUSED_OUTCOME_ATTR, paused_at
from drsearch.search.store import INTERRUPTED, named_constraints

#: The environment variable that turns MLflow tracking on (its tracking URI), as
#: ``tracking.mlflow.tracking_uri`` in a study file does.
MLFLOW_URI_ENV = "DRSEARCH_MLFLOW_URI"
STUDY_TAG = "drsearch.study"
TRIAL_TAG = "drsearch.trial"
STATE_TAG = "drsearch.state"
#: MLflow's end status of each Optuna state (a pruned trial ended as the search decided:
#: FINISHED, with ``drsearch.state`` PRUNED; a trial cut off by Ctrl-C or a lost runner: KILLED)
MLFLOW_STATUS = {"COMPLETE": "FINISHED", "PRUNED": "FINISHED", "FAIL": "FAILED"}
ARTIFACTS = ("config.yaml", "metrics.jsonl", "metrics.json")
#: User attributes that say where a trial came from, kept as tags of its run.
ORIGIN = ("queued_from", "retry_of", "confirm_of", "fold", "seed")


class Backend(Protocol):
    """One tracking service. Every write is idempotent (a run is found by its tags, an
    epoch's metrics are logged once by step), so a write retried or replayed after a crash
    leaves what one write leaves. Every call may raise: ``StudyTracking`` retries it, then
    lets the backend fall behind and catches it up from the study later."""

    name: str
    where: str  # shown to the user, secrets masked

    def open_study(self, study: str, name: str, params: dict[str, str]) -> None:
        """Find or create the study's run (its status is left as it is)."""

    def study_status(self, running: bool) -> bool:
        """The study's run RUNNING or FINISHED; whether that changed it."""

    def tracked(self) -> dict[int, tuple[str, str]]:
        """Every trial run of the study: its ``drsearch.state`` tag and status, read afresh."""

    def trial_run(
        self, number: int, params: dict[str, str], tags: dict[str, str], running: bool
    ) -> None:
        """Find or create the trial's run; ``running``: set it RUNNING (state RUNNING)."""

    def last_epoch(self, number: int) -> int: ...
    def log_epoch(self, number: int, epoch: int, metrics: dict[str, float]) -> None: ...
    def pause(self, number: int) -> None:
        """The run waits at a rung: state PAUSED, status RUNNING."""

    def end_trial(
        self,
        number: int,
        status: str,
        metrics: dict[str, float],
        tags: dict[str, str],
        artifacts: list[Path],
        end_ms: int | None,
    ) -> None: ...
    def hide(self, text: str) -> str: ...


def home_name(loaded: LoadedStudy) -> str:
    """The name the study's tracking lives under: a confirmation study (``<name>-confirm``,
    ``search.selection``) is tracked in its parent's store, experiment and project."""
    name = loaded.config.name
    return name.removesuffix("-confirm") if loaded.companion else name


def mlflow_uri(loaded: LoadedStudy) -> str | None:
    """The MLflow tracking URI of the study (``None``: not tracked in MLflow): the
    environment's, the study file's, or by default a SQLite store beside the study."""
    cfg = loaded.config
    env = os.environ.get(MLFLOW_URI_ENV)
    if env:
        return env
    if cfg.tracking.mlflow is None:
        return None
    if cfg.tracking.mlflow.tracking_uri:
        return cfg.tracking.mlflow.tracking_uri
    return f"sqlite:///{(cfg.run_root / f'{home_name(loaded)}-mlflow.db').resolve()}"


def metric_name(name: str) -> str:
    """A name MLflow takes (alphanumerics, ``_ - . : /`` and spaces):
    ``constraint/sensitivity_pdr>=0.5`` -> ``constraint/sensitivity_pdr_ge_0.5``."""
    name = name.replace(">=", "_ge_").replace("<=", "_le_")
    return re.sub(r"[^A-Za-z0-9_\-. :/]", "_", name)[:250]


def epoch_metrics(record: dict[str, Any]) -> dict[str, float]:
    """The numbers of one ``metrics.jsonl`` line, flat: ``val/accuracy``, per-grade
    ``val/sensitivity/grade3``, the LR of each parameter group ``lr/backbone``, the train
    loss, and the epoch's objective as the trainer scored it (``objective``: primary minus
    penalty; ``val.objective`` in the record, not scored again here)."""
    out: dict[str, float] = {"epoch": float(record.get("epoch", 0))}

    def put(key: str, value: Any) -> None:
        if (
            isinstance(value, bool)
            or isinstance(value, int | float)
            and math.isfinite(float(value))
        ):
            out[key] = float(value)

    for key, value in (record.get("train") or {}).items():
        put(f"train/{key}", value)
    val = record.get("val") or {}
    for key, value in val.items():
        if key == "objective":
            continue  # logged as ``objective`` below
        if isinstance(value, list) and key != "confusion_matrix":
            for grade, v in enumerate(value):
                put(f"val/{key}/grade{grade}", v)
        else:
            put(f"val/{key}", value)
    for group, lr in (record.get("lr") or {}).items():
        put(f"lr/{group}", lr)
    for key in ("epoch_seconds", "image_size"):
        put(key, record.get(key))
    put("objective", val.get("objective"))
    return out


def read_epochs(run_dir: Path | None, after: int) -> list[tuple[int, dict[str, float]]]:
    """The epochs of a trial's ``metrics.jsonl`` past ``after``, flattened, each once."""
    path = run_dir / "metrics.jsonl" if run_dir is not None else None
    if path is None or not path.is_file():
        return []
    rows: dict[int, dict[str, float]] = {}
    for line in path.read_text().splitlines():
        try:
            row = json.loads(line)
        except ValueError:
            continue  # a line being written
        if isinstance(row, dict) and int(row.get("epoch", 0)) > after:
            rows[int(row["epoch"])] = epoch_metrics(row)
    return sorted(rows.items())


def shown_params(params: dict[str, Any]) -> dict[str, str]:
    return {k: v if isinstance(v, str) else json.dumps(v) for k, v in params.items()}


def origin_tags(attrs: dict[str, Any]) -> dict[str, str]:
    """Where a trial came from (a warm start, the finalist it confirms...), as run tags."""
    return {f"drsearch.{k}": str(attrs[k]) for k in ORIGIN if attrs.get(k) is not None}


def target(trial: Any) -> tuple[str, str] | None:
    """What a trial's run should say by the study: ``(drsearch.state, status)``. ``None``
    for a trial that runs (its runner tracks it) or waits in the queue."""
    state = trial.state.name
    if state == "RUNNING":
        return ("PAUSED", "RUNNING") if paused_at(trial) is not None else None
    if state == "WAITING":
        return None
    interrupted = trial.user_attrs.get("fail_reason") == INTERRUPTED
    return state, "KILLED" if interrupted else MLFLOW_STATUS.get(state, "FAILED")


def paused_attrs(trial: Any) -> dict[str, Any]:
    """A paused trial's attributes as it paused (the study keeps only what a promotion
    carries on; the rest waits in the outcome it would be pruned with)."""
    stored = trial.system_attrs.get(PAUSED_OUTCOME_ATTR)
    attrs = dict(json.loads(stored).get("user_attrs") or {}) if stored else {}
    return attrs | dict(trial.user_attrs)


def end_fields(
    state: str, value: float | None, attrs: dict[str, Any], constraints: dict[str, float]
) -> tuple[dict[str, float], dict[str, str]]:
    """The metrics and tags a trial's run ends with: its value, primary, best epoch, wall
    time, the epoch it was pruned at, constraint values; its state, feasibility, why it
    failed or was infeasible, and where it came from."""
    metrics = {metric_name(f"constraint/{k}"): float(v) for k, v in constraints.items()}
    if value is not None and math.isfinite(value):
        metrics["value"] = float(value)
    for key in ("objective_primary", "best_epoch", "wall_seconds", "pruned_at_epoch"):
        v = attrs.get(key)
        if isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v):
            metrics[key] = float(v)
    tags = {STATE_TAG: state, "drsearch.feasible": str(bool(attrs.get("feasible")))}
    for key in ("fail_reason", "infeasible_reasons", "recovered_from", *ORIGIN):
        v = attrs.get(key)
        if v is not None and v != [] and v != "":  # fold 0, trial 0 count
            tags[f"drsearch.{key}"] = "; ".join(v) if isinstance(v, list) else str(v)
    return metrics, tags


def trial_end_fields(trial: Any) -> tuple[dict[str, float], dict[str, str]]:
    """``end_fields`` of a stored (ended) trial, as the study holds it."""
    value = trial.value if trial.state.name == "COMPLETE" else None
    return end_fields(trial.state.name, value, dict(trial.user_attrs), named_constraints(trial))


def run_folder(trial: Any) -> Path | None:
    """The trial's run folder, as its record names it (a paused trial's: in its outcome)."""
    folder = paused_attrs(trial).get("run_dir")
    return Path(str(folder)) if folder else None
