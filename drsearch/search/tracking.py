"""Experiment tracking of a study in the tools a DR team already runs (MLflow, W&B).

One parent run per study and one child run per trial, found again by their tags
(``drsearch.study`` = the study's UUID, ``drsearch.trial`` = its number), so a continued,
retried or resumed study reuses its runs and never duplicates them. The search driver writes
them through ``TrackedProgress``, a progress display wrapped around the runner's own: the
trainer (``drsearch.train``) knows nothing of tracking. Each epoch's metrics are read from the
trial's ``metrics.jsonl`` (the trainer's record, also what the report reads) and logged once
per epoch (a resumed trial's replayed epochs are not logged again); the trial's state, value,
feasibility and constraint values are logged when it ends, with its ``config.yaml``,
``metrics.jsonl`` and ``metrics.json`` as artifacts. A tracking backend that fails (a server
down, a full disk) costs one warning, and the study goes on untracked by it: never a trial.
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
import shlex
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

from drsearch.config.study import LoadedStudy
from drsearch.search.database import masked_url
from drsearch.search.store import INTERRUPTED
from drsearch.search.trial import Outcome

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
    """One tracking service. Every call may raise: ``StudyTracking`` turns that into a
    warning and stops using the backend."""

    name: str
    where: str  # shown to the user, secrets masked

    def study_run(self, study: str, name: str, params: dict[str, str]) -> None: ...
    def trial_run(self, number: int, params: dict[str, str], tags: dict[str, str]) -> int: ...
    def log_epoch(self, number: int, epoch: int, metrics: dict[str, float]) -> None: ...
    def end_trial(
        self,
        number: int,
        status: str,
        metrics: dict[str, float],
        tags: dict[str, str],
        artifacts: list[Path],
    ) -> None: ...
    def last_epoch(self, number: int) -> int: ...
    def set_state(self, number: int, state: str) -> None: ...
    def study_idle(self) -> None: ...
    def ended(self) -> dict[int, str]: ...
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


class MLflowBackend:
    """MLflow through its client (``MlflowClient``): a local SQLite store or a server."""

    name = "MLflow"

    def __init__(self, uri: str, experiment: str, artifact_root: Path) -> None:
        # a server that is down answers at once instead of after minutes of retries
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "10")
        from mlflow.tracking import MlflowClient

        for noisy in ("mlflow.store.db.utils", "alembic"):  # "Creating initial tables..."
            logging.getLogger(noisy).setLevel(logging.WARNING)

        self.uri, self.where = uri, masked_url(uri)
        self.next_step = (
            f"mlflow ui --backend-store-uri {shlex.quote(self.where)}",
            "the study's MLflow runs: one per trial, under the study's run",
        )
        self.client = MlflowClient(tracking_uri=uri)
        found = self.client.get_experiment_by_name(experiment)
        if found is not None:
            self.experiment = found.experiment_id
        else:
            local = uri.startswith(("sqlite:", "file:")) or "://" not in uri
            # a local store keeps its artifacts under the run root, never in the cwd's mlruns/
            location = artifact_root.resolve().as_uri() if local else None
            self.experiment = self.client.create_experiment(experiment, location)
        self.study: str | None = None
        self.parent: str | None = None
        self.runs: dict[int, str] = {}
        self.logged: dict[int, int] = {}  # the last epoch logged, per trial

    def hide(self, text: str) -> str:
        """``text`` with the tracking URI's secrets masked."""
        return text.replace(self.uri, self.where)

    def last_epoch(self, number: int) -> int:
        return self.logged.get(number, 0)

    def set_state(self, number: int, state: str) -> None:
        self.client.set_tag(self.runs[number], STATE_TAG, state)

    def _find(self, kind: str, number: int | None = None) -> Any:
        query = f"tags.`{STUDY_TAG}` = '{self.study}' and tags.`drsearch.kind` = '{kind}'"
        if number is not None:
            query += f" and tags.`{TRIAL_TAG}` = '{number}'"
        found = self.client.search_runs([self.experiment], query, max_results=1)
        return found[0] if found else None

    def study_run(self, study: str, name: str, params: dict[str, str]) -> None:
        self.study = study
        run = self._find("study")
        if run is None:
            tags = {STUDY_TAG: study, "drsearch.kind": "study", "mlflow.runName": name}
            run = self.client.create_run(self.experiment, tags=tags, run_name=name)
            self._params(run.info.run_id, params)
        elif run.info.status != "RUNNING":  # continued: it runs again
            self.client.update_run(run.info.run_id, status="RUNNING")
        self.parent = run.info.run_id

    def study_idle(self) -> None:
        """No trial of the study runs or waits at a rung: its run is FINISHED (for now)."""
        if self.parent is not None:
            self.client.set_terminated(self.parent, "FINISHED")

    def _params(self, run_id: str, params: dict[str, str]) -> None:
        from mlflow.entities import Param

        items = [Param(k[:250], v[:6000]) for k, v in params.items()]
        for start in range(0, len(items), 100):  # MLflow takes at most 100 params a batch
            self.client.log_batch(run_id, params=items[start : start + 100])

    def trial_run(self, number: int, params: dict[str, str], tags: dict[str, str]) -> int:
        """Find or create the trial's run; the last epoch it already has logged."""
        if number not in self.runs:
            run = self._find("trial", number)
            if run is None:
                all_tags = tags | {
                    STUDY_TAG: str(self.study), TRIAL_TAG: str(number),
                    "drsearch.kind": "trial", "mlflow.parentRunId": str(self.parent),
                    "mlflow.runName": f"trial {number}",
                }  # fmt: skip
                run = self.client.create_run(self.experiment, tags=all_tags)
                self._params(run.info.run_id, params)
                self.logged[number] = 0
            else:
                history = self.client.get_metric_history(run.info.run_id, "epoch")
                self.logged[number] = int(max((m.step for m in history), default=0))
                if run.info.status != "RUNNING":  # promoted again, or re-run: it runs again
                    self.client.update_run(run.info.run_id, status="RUNNING")
            self.runs[number] = run.info.run_id
        self.client.set_tag(self.runs[number], STATE_TAG, "RUNNING")
        return self.logged[number]

    def log_epoch(self, number: int, epoch: int, metrics: dict[str, float]) -> None:
        from mlflow.entities import Metric

        if epoch <= self.logged.get(number, 0):
            return

        now = int(time.time() * 1000)
        items = [Metric(metric_name(k), v, now, epoch) for k, v in metrics.items()]
        for start in range(0, len(items), 1000):
            self.client.log_batch(self.runs[number], metrics=items[start : start + 1000])
        self.logged[number] = epoch

    def end_trial(
        self,
        number: int,
        status: str,
        metrics: dict[str, float],
        tags: dict[str, str],
        artifacts: list[Path],
    ) -> None:
        from mlflow.entities import Metric, RunTag

        if number not in self.runs:  # started by an earlier run of the study
            self.trial_run(number, {}, {})
        run_id = self.runs[number]
        now = int(time.time() * 1000)
        self.client.log_batch(
            run_id,
            metrics=[Metric(metric_name(k), v, now, 0) for k, v in metrics.items()],
            tags=[RunTag(k, v[:5000]) for k, v in tags.items()],
        )
        for path in artifacts:
            self.client.log_artifact(run_id, str(path))
        self.client.set_terminated(run_id, status)

    def ended(self) -> dict[int, str]:
        """Every trial run of the study and its ``drsearch.state`` tag."""
        query = f"tags.`{STUDY_TAG}` = '{self.study}' and tags.`drsearch.kind` = 'trial'"
        out: dict[int, str] = {}
        token = None
        while True:
            page = self.client.search_runs(
                [self.experiment], query, max_results=1000, page_token=token
            )
            for run in page:
                number = int(run.data.tags[TRIAL_TAG])
                self.runs.setdefault(number, run.info.run_id)
                out[number] = run.data.tags.get(STATE_TAG, "RUNNING")
            token = page.token
            if not token:
                return out


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


def _read_epochs(run_dir: Path, after: int) -> list[dict[str, Any]]:
    path = run_dir / "metrics.jsonl"
    if not path.is_file():
        return []
    rows = []
    for line in path.read_text().splitlines():
        try:
            row = json.loads(line)
        except ValueError:
            continue  # a line being written
        if isinstance(row, dict) and int(row.get("epoch", 0)) > after:
            rows.append(row)
    return rows


class StudyTracking:
    """A study's tracking: its backends, fed by the search driver's progress hooks."""

    def __init__(
        self,
        loaded: LoadedStudy,
        study_uuid: str,
        run_dir: Callable[[int], Path],
        backends: list[Backend],
        warn: Callable[[str], None],
    ) -> None:
        self.loaded, self.uuid, self.run_dir, self.warn = loaded, study_uuid, run_dir, warn
        self.backends = list(backends)
        self.started = list(backends)  # the ones that started, failed since or not
        self.params: dict[int, dict[str, Any]] = {}
        #: a trial's user attributes as the study holds them (where a queued trial came
        #: from: a warm start, a finalist it confirms); set by the runner
        self.trial_attrs: Callable[[int], dict[str, Any]] = lambda number: {}
        cfg = loaded.config
        params = {
            "study": cfg.name, "objective.metric": cfg.objective.metric,
            "objective.constraints": json.dumps(
                [[c.metric, c.min] for c in cfg.objective.constraints]),
            "sampler": cfg.sampler.label(),
            "pruner": json.dumps(cfg.pruner.model_dump(mode="json")),
            "search_space": json.dumps(sorted(loaded.space)),
        }  # fmt: skip
        self._each(lambda b: b.study_run(study_uuid, cfg.name, params))

    def next_steps(self) -> list[tuple[str, str]]:
        """The commands that open what the backends wrote, for ``run``'s next steps."""
        return [b.next_step for b in self.started if getattr(b, "next_step", None)]

    def _each(self, call: Callable[[Backend], Any]) -> None:
        for backend in list(self.backends):
            try:
                for attempt in range(4):  # a SQLite store shared by runners: briefly locked
                    try:
                        call(backend)
                        break
                    except Exception as exc:  # noqa: BLE001 - retried only when locked
                        if "locked" not in str(exc) or attempt == 3:
                            raise
                        time.sleep(0.5 * (attempt + 1))
            except Exception as exc:  # noqa: BLE001 - tracking never costs a trial
                self.backends.remove(backend)
                first = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else ""
                self.warn(
                    f"{backend.name} tracking at {backend.where} failed ({type(exc).__name__}: "
                    f"{backend.hide(first)}); the study goes on without it"
                )

    def trial_started(self, number: int, params: dict[str, Any]) -> None:
        self.params[number] = params
        shown = {k: json.dumps(v) if not isinstance(v, str) else v for k, v in params.items()}
        attrs = self.trial_attrs(number)
        tags = {STATE_TAG: "RUNNING"} | {
            f"drsearch.{k}": str(attrs[k]) for k in ORIGIN if attrs.get(k) is not None
        }
        self._each(lambda b: b.trial_run(number, shown, tags))

    def trial_epoch(self, number: int) -> None:
        self._log_epochs(number)

    def _log_epochs(self, number: int) -> None:
        """The epochs of the trial's record that some backend has not logged yet: the file
        read and each epoch flattened once, whatever the number of backends."""
        if not self.backends:
            return
        after = min(b.last_epoch(number) for b in self.backends)
        rows = [
            (int(r["epoch"]), epoch_metrics(r)) for r in _read_epochs(self.run_dir(number), after)
        ]

        def log(b: Backend) -> None:
            for epoch, metrics in rows:
                b.log_epoch(number, epoch, metrics)  # each backend skips what it has

        self._each(log)

    def trial_paused(self, number: int, epoch: int) -> None:
        self._log_epochs(number)
        self._each(lambda b: b.set_state(number, "PAUSED"))

    def trial_finished(self, number: int, outcome: Outcome) -> None:
        self._log_epochs(number)
        self._end(number, str(outcome.state), outcome.value, outcome.user_attrs,
                  outcome.constraints)  # fmt: skip

    def _end(
        self,
        number: int,
        state: str,
        value: float | None,
        attrs: dict[str, Any],
        constraints: dict[str, float],
    ) -> None:
        interrupted = attrs.get("fail_reason") == INTERRUPTED
        status = "KILLED" if interrupted else MLFLOW_STATUS.get(state, "FAILED")
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
        folder = self.run_dir(number)
        files = [folder / name for name in ARTIFACTS if (folder / name).is_file()]

        def end(b: Backend) -> None:
            b.end_trial(number, status, metrics, tags, files)

        self._each(end)

    def sync(self, trials: list[Any]) -> None:
        """Runs left RUNNING for trials that have since ended (a runner stopped by Ctrl-C or
        lost, its trials reaped by another): ended now as the study says."""

        def one(b: Backend) -> None:
            states = b.ended()
            for t in trials:
                state = t.state.name
                if states.get(t.number) in ("RUNNING", "PAUSED") and state != "RUNNING":
                    b.end_trial(t.number, "KILLED" if t.user_attrs.get("fail_reason") == INTERRUPTED
                                else MLFLOW_STATUS.get(state, "FAILED"), {},
                                {STATE_TAG: state}, [])  # fmt: skip
            if not any(t.state.name in ("RUNNING", "WAITING") for t in trials):
                b.study_idle()  # another runner still at work keeps the study's run RUNNING

        self._each(one)


class TrackedProgress:
    """The runner's progress display, and the study's tracking fed from the same hooks."""

    def __init__(self, inner: Any, tracking: StudyTracking) -> None:
        self.inner, self.tracking = inner, tracking

    def trial_started(self, number: int, params: dict[str, Any]) -> None:
        self.inner.trial_started(number, params)
        self.tracking.trial_started(number, params)

    def trial_epoch(self, number: int, epoch: int, value: float) -> None:
        self.inner.trial_epoch(number, epoch, value)
        self.tracking.trial_epoch(number)

    def trial_finished(self, number: int, outcome: Outcome) -> None:
        self.inner.trial_finished(number, outcome)
        self.tracking.trial_finished(number, outcome)

    def trial_paused(self, number: int, epoch: int) -> None:
        self.inner.trial_paused(number, epoch)
        self.tracking.trial_paused(number, epoch)

    def warn(self, message: str) -> None:
        self.inner.warn(message)


class WandbBackend:
    """Weights & Biases: one W&B run per trial (grouped by study, its id derived from the
    study's UUID and the trial number, so a resumed or promoted trial continues its run),
    offline by default (``wandb sync`` uploads later). W&B cannot be asked offline what a run
    holds, so a small ledger per trial (``<dir>/drsearch/<number>.json``: its last logged
    epoch and state) keeps each epoch logged once and lets ``sync`` end orphaned runs."""

    name = "W&B"

    def __init__(self, project: str, entity: str | None, mode: str, folder: Path) -> None:
        import wandb

        self.wandb = wandb
        self.project, self.entity, self.mode = project, entity, mode
        self.folder = folder.resolve()
        self.ledger = self.folder / "drsearch"
        self.ledger.mkdir(parents=True, exist_ok=True)
        self.where = f"{mode} project {project} ({self.folder})"
        self.next_step = (
            (f"wandb sync {shlex.quote(str(self.folder / 'wandb'))}/offline-run-*",
             "upload the study's W&B runs (written offline)") if mode == "offline" else None
        )  # fmt: skip
        self.study = ""
        self.group = ""
        self.runs: dict[int, Any] = {}

    def hide(self, text: str) -> str:
        return text

    def study_run(self, study: str, name: str, params: dict[str, str]) -> None:
        self.study, self.group = study, name

    def study_idle(self) -> None:
        """Nothing: W&B groups the trial runs; there is no study run to end."""

    def _entry(self, number: int) -> dict[str, Any]:
        path = self.ledger / f"{number}.json"
        return json.loads(path.read_text()) if path.is_file() else {"epoch": 0}

    def _write(self, number: int, **changes: Any) -> None:
        from drsearch.io import write_text_atomic

        entry = self._entry(number) | changes
        write_text_atomic(self.ledger / f"{number}.json", json.dumps(entry))

    def last_epoch(self, number: int) -> int:
        return int(self._entry(number).get("epoch", 0))

    def trial_run(self, number: int, params: dict[str, str], tags: dict[str, str]) -> int:
        if number not in self.runs:
            self.runs[number] = self.wandb.init(
                project=self.project, entity=self.entity, mode=self.mode, dir=str(self.folder),
                id=f"{self.study[:8]}-trial{number}", name=f"trial {number}", group=self.group,
                job_type="trial", config=params | tags, resume="allow", reinit="create_new",
                settings=self.wandb.Settings(silent=True, console="off"),
            )  # fmt: skip
            self._write(number, state="RUNNING", study=self.study)
        return self.last_epoch(number)

    def log_epoch(self, number: int, epoch: int, metrics: dict[str, float]) -> None:
        if epoch <= self.last_epoch(number):
            return
        self.runs[number].log(metrics, step=epoch)
        self._write(number, epoch=epoch)

    def set_state(self, number: int, state: str) -> None:
        run = self.runs.pop(number, None)
        if run is not None:  # paused: this process lets the run go (a promotion resumes it)
            run.summary[STATE_TAG] = state
            run.finish()
        self._write(number, state=state)

    def end_trial(
        self,
        number: int,
        status: str,
        metrics: dict[str, float],
        tags: dict[str, str],
        artifacts: list[Path],
    ) -> None:
        if number not in self.runs:
            self.trial_run(number, {}, {})
        run = self.runs.pop(number)
        for key, value in [*metrics.items(), *tags.items()]:
            run.summary[key] = value
        if artifacts:
            artifact = self.wandb.Artifact(f"trial{number}-{self.study[:8]}", type="trial")
            for path in artifacts:
                artifact.add_file(str(path))
            run.log_artifact(artifact)
        run.finish(exit_code=0 if status == "FINISHED" else 1)
        self._write(number, state=tags.get(STATE_TAG, status))

    def ended(self) -> dict[int, str]:
        out = {}
        for path in self.ledger.glob("*.json"):
            entry = json.loads(path.read_text())
            if entry.get("study") == self.study:
                out[int(path.stem)] = str(entry.get("state", "RUNNING"))
        return out


def register_export(
    loaded: LoadedStudy,
    number: int,
    recipe: Path,
    weights: Path,
    evaluation: dict[str, Any] | None,
    name: str,
) -> tuple[str, str]:
    """Register an exported trial as a new version of model ``name``: an MLflow run (tagged
    ``drsearch.kind: export``) holding ``model/`` = the pinned recipe, its weights and the
    held-out evaluation record (``evaluation.json``, operating points included), and a model
    version pointing at it. Its version number and where (secrets masked)."""
    from mlflow.exceptions import MlflowException

    from drsearch.errors import ConfigError

    uri = mlflow_uri(loaded)
    assert uri is not None
    cfg = loaded.config
    experiment = (cfg.tracking.mlflow.experiment if cfg.tracking.mlflow else None) or cfg.name
    try:
        backend = MLflowBackend(uri, experiment, cfg.run_root / f"{cfg.name}-mlflow-artifacts")
        client = backend.client
        tags = {"drsearch.kind": "export", TRIAL_TAG: str(number), "drsearch.study_name": cfg.name,
                "mlflow.runName": f"export of trial {number}"}  # fmt: skip
        run = client.create_run(backend.experiment, tags=tags)
        run_id = run.info.run_id
        client.log_artifact(run_id, str(recipe), "model")
        client.log_artifact(run_id, str(weights), "model")
        record = Path(str((evaluation or {}).get("file", "")))
        if evaluation and record.is_file():
            import tempfile

            with tempfile.TemporaryDirectory() as tmp:
                copy = Path(tmp) / "evaluation.json"
                copy.write_text(record.read_text())
                client.log_artifact(run_id, str(copy), "model")
        figures = {k: float(v) for k, v in (evaluation or {}).items()
                   if isinstance(v, int | float) and not isinstance(v, bool)}  # fmt: skip
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        if figures:
            client.log_batch(run_id, metrics=[Metric(metric_name(f"test/{k}"), v, now, 0)
                                              for k, v in figures.items()])  # fmt: skip
        client.set_terminated(run_id, "FINISHED")
        try:
            client.create_registered_model(name)
        except MlflowException as exc:
            if "already exists" not in str(exc).lower() and "RESOURCE_ALREADY_EXISTS" not in str(
                getattr(exc, "error_code", "")
            ):
                raise
        version = client.create_model_version(
            name,
            source=f"{client.get_run(run_id).info.artifact_uri}/model",
            run_id=run_id,
            tags={
                "drsearch.study": cfg.name,
                TRIAL_TAG: str(number),
                "drsearch.recipe": recipe.name,
                "drsearch.weights": weights.name,
                "drsearch.evaluated": str(bool(evaluation)),
            },  # fmt: skip
            description=f"trial {number} of study {cfg.name}, exported by drsearch",
        )
    except MlflowException as exc:
        first = str(exc).strip().splitlines()[0][:300] if str(exc).strip() else ""
        raise ConfigError(
            f"{recipe} and {weights} are written, but registering {name} in "
            f"{masked_url(uri)} failed: {first.replace(uri, masked_url(uri))}"
        ) from None
    return str(version.version), masked_url(uri)


def open_tracking(
    loaded: LoadedStudy,
    study_uuid: str,
    run_dir: Callable[[int], Path],
    warn: Callable[[str], None],
) -> StudyTracking | None:
    """The study's tracking, or ``None`` when it asks for none. A backend that cannot be
    reached costs a warning; the study runs without it."""
    cfg = loaded.config
    home = home_name(loaded)
    backends: list[Any] = []
    uri = mlflow_uri(loaded)
    if uri is not None:
        experiment = (cfg.tracking.mlflow.experiment if cfg.tracking.mlflow else None) or home
        artifacts = cfg.run_root / f"{home}-mlflow-artifacts"
        backends.append(
            _start(
                "MLflow",
                masked_url(uri),
                "mlflow",
                lambda t: t.replace(uri, masked_url(uri)),
                warn,
                lambda: MLflowBackend(uri, experiment, artifacts),
            )  # fmt: skip
        )
    w = cfg.tracking.wandb
    if w is not None:
        folder = cfg.run_root / f"{home}-wandb"
        project = w.project or home
        backends.append(
            _start(
                "W&B",
                f"project {project}",
                "wandb",
                lambda t: t,
                warn,
                lambda: WandbBackend(project, w.entity, w.mode, folder),
            )  # fmt: skip
        )
    started = [b for b in backends if b is not None]
    return StudyTracking(loaded, study_uuid, run_dir, started, warn) if started else None


def _start(
    name: str,
    where: str,
    package: str,
    hide: Callable[[str], str],
    warn: Callable[[str], None],
    make: Callable[[], Any],
) -> Any:
    """``make()``, or ``None`` with one warning when it cannot start."""
    try:
        return make()
    except ImportError:
        warn(f"{name} tracking is asked for but {package} is not installed: pip install "
             "'drsearch[tracking]'; the study runs without it")  # fmt: skip
    except Exception as exc:  # noqa: BLE001 - a tracking store down costs a warning
        first = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else ""
        warn(f"{name} tracking at {where} could not start ({type(exc).__name__}: "
             f"{hide(first)}); the study runs without it")  # fmt: skip
    return None
