"""MLflow through its client (``MlflowClient``): a local SQLite store or a tracking server.

Every run is found by its tags (``drsearch.study``, ``drsearch.kind``, ``drsearch.trial``),
never only remembered, so a write replayed by another process, or after a crash, finds the
run the first one made. The run-id map below only saves look-ups: runs are never deleted.
"""

from __future__ import annotations

import logging
import os
import shlex
import time
from pathlib import Path
from typing import Any

from drsearch.search.database import hide_secrets, masked_url
from drsearch.search.tracking.common import STATE_TAG, STUDY_TAG, TRIAL_TAG, metric_name
from drsearch.train.faults import calls_fault


def quiet_client_env() -> None:
    """MLflow's client as drsearch uses it: a server that is down answers at once (no
    minutes of retries: drsearch retries briefly itself, then catches up later), and no
    ``View run NAME at: URL`` line on stdout (the URL may hold a password)."""
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "10")
    os.environ["MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT"] = "true"
    for noisy in ("mlflow.store.db.utils", "alembic"):  # "Creating initial tables..."
        logging.getLogger(noisy).setLevel(logging.WARNING)


def next_step(uri: str) -> tuple[str, str]:
    """The command (or address) that shows the study's runs, its secrets masked."""
    shown = masked_url(uri)
    what = "the study's MLflow runs: one per trial, under the study's run"
    if uri.startswith(("http://", "https://")):
        return shown, what
    return f"mlflow ui --backend-store-uri {shlex.quote(shown)}", what


class MLflowBackend:
    """One study's runs in one MLflow experiment."""

    name = "MLflow"

    def __init__(self, uri: str, experiment: str, artifact_root: Path) -> None:
        quiet_client_env()
        from mlflow.tracking import MlflowClient

        self.uri, self.where = uri, masked_url(uri)
        # the chaos benchmark's kill inside a client call (DRSEARCH_FAULT=tracking:N)
        self.client = calls_fault(MlflowClient(tracking_uri=uri), "tracking")
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
        self.logged: dict[int, int] = {}  # the last epoch logged, per trial, as last read

    def hide(self, text: str) -> str:
        """``text`` with the tracking URI's secrets masked."""
        return hide_secrets(text, self.uri)

    def _find(self, kind: str, number: int | None = None) -> Any:
        query = f"tags.`{STUDY_TAG}` = '{self.study}' and tags.`drsearch.kind` = '{kind}'"
        if number is not None:
            query += f" and tags.`{TRIAL_TAG}` = '{number}'"
        found = self.client.search_runs(
            [self.experiment], query, max_results=1, order_by=["attributes.start_time ASC"]
        )
        return found[0] if found else None

    def open_study(self, study: str, name: str, params: dict[str, str]) -> None:
        self.study = study
        run = self._find("study")
        if run is None:
            tags = {STUDY_TAG: study, "drsearch.kind": "study", "mlflow.runName": name}
            run = self.client.create_run(self.experiment, tags=tags, run_name=name)
            self._params(run.info.run_id, params)
            self.client.set_terminated(run.info.run_id, "FINISHED")  # RUNNING once a trial is
        self.parent = run.info.run_id

    def study_status(self, running: bool) -> bool:
        assert self.parent is not None
        want = "RUNNING" if running else "FINISHED"
        if self.client.get_run(self.parent).info.status == want:
            return False
        if running:
            self.client.update_run(self.parent, status="RUNNING")
        else:
            self.client.set_terminated(self.parent, "FINISHED")
        return True

    def _params(self, run_id: str, params: dict[str, str]) -> None:
        from mlflow.entities import Param

        items = [Param(k[:250], v[:6000]) for k, v in params.items()]
        for start in range(0, len(items), 100):  # MLflow takes at most 100 params a batch
            self.client.log_batch(run_id, params=items[start : start + 100])

    def tracked(self) -> dict[int, tuple[str, str]]:
        query = f"tags.`{STUDY_TAG}` = '{self.study}' and tags.`drsearch.kind` = 'trial'"
        out: dict[int, tuple[str, str]] = {}
        token = None
        self.logged.clear()  # read afresh: another process may have logged since
        while True:
            page = self.client.search_runs(
                [self.experiment],
                query,
                max_results=1000,
                order_by=["attributes.start_time ASC"],
                page_token=token,
            )
            for run in page:
                number = int(run.data.tags[TRIAL_TAG])
                if number not in out:  # the first made, should two ever exist
                    self.runs[number] = run.info.run_id
                    out[number] = (run.data.tags.get(STATE_TAG, "RUNNING"), run.info.status)
            token = page.token
            if not token:
                return out

    def _run(self, number: int) -> str | None:
        if number not in self.runs:
            run = self._find("trial", number)
            if run is None:
                return None
            self.runs[number] = run.info.run_id
        return self.runs[number]

    def _must(self, number: int) -> str:
        run_id = self._run(number)
        if run_id is None:
            raise LookupError(f"no MLflow run of trial {number} yet")
        return run_id

    def trial_run(
        self, number: int, params: dict[str, str], tags: dict[str, str], running: bool
    ) -> None:
        from mlflow.entities import RunTag

        run_id = self._run(number)
        if run_id is None:
            all_tags = tags | {
                STUDY_TAG: str(self.study), TRIAL_TAG: str(number), STATE_TAG: "RUNNING",
                "drsearch.kind": "trial", "mlflow.parentRunId": str(self.parent),
                "mlflow.runName": f"trial {number}",
            }  # fmt: skip
            run = self.client.create_run(self.experiment, tags=all_tags)
            self._params(run.info.run_id, params)
            self.runs[number], self.logged[number] = run.info.run_id, 0
        elif running:  # promoted again, or re-run: it runs again
            self.client.update_run(run_id, status="RUNNING")
            items = tags | {STATE_TAG: "RUNNING"}
            self.client.log_batch(run_id, tags=[RunTag(k, v[:5000]) for k, v in items.items()])

    def last_epoch(self, number: int) -> int:
        if number not in self.logged:
            run_id = self._run(number)
            history = self.client.get_metric_history(run_id, "epoch") if run_id else []
            self.logged[number] = int(max((m.step for m in history), default=0))
        return self.logged[number]

    def log_epoch(self, number: int, epoch: int, metrics: dict[str, float]) -> None:
        from mlflow.entities import Metric

        if epoch <= self.last_epoch(number):
            return
        run_id = self._must(number)
        now = int(time.time() * 1000)
        items = [Metric(metric_name(k), v, now, epoch) for k, v in metrics.items()]
        for start in range(0, len(items), 1000):
            self.client.log_batch(run_id, metrics=items[start : start + 1000])
        self.logged[number] = epoch

    def pause(self, number: int) -> None:
        run_id = self._must(number)
        self.client.set_tag(run_id, STATE_TAG, "PAUSED")
        self.client.update_run(run_id, status="RUNNING")

    def end_trial(
        self,
        number: int,
        status: str,
        metrics: dict[str, float],
        tags: dict[str, str],
        artifacts: list[Path],
        end_ms: int | None,
    ) -> None:
        from mlflow.entities import Metric, RunTag

        run_id = self._must(number)
        now = int(time.time() * 1000)
        self.client.log_batch(
            run_id,
            metrics=[Metric(metric_name(k), v, now, 0) for k, v in metrics.items()],
            tags=[RunTag(k, v[:5000]) for k, v in tags.items()],
        )
        for path in artifacts:
            self.client.log_artifact(run_id, str(path))
        # the status last: a run cut off before it still differs from the study, and is
        # ended again by the next reconcile
        self.client.set_terminated(run_id, status, end_time=end_ms)
