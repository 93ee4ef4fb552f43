"""Experiment tracking of a study in the tools a DR team already runs (MLflow, W&B).

One parent run per study and one child run per trial, found again by their tags
(``drsearch.study`` = the study's UUID, ``drsearch.trial`` = its number), so a continued,
retried or resumed study reuses its runs and never duplicates them. The search driver writes
them through ``TrackedProgress``, a progress display wrapped around the runner's own: the
trainer (``drsearch.train``) knows nothing of tracking. Each epoch's metrics are read from the
trial's ``metrics.jsonl`` (the trainer's record, also what the report reads) and logged once
per epoch; the trial's state, value, feasibility and constraint values are logged when it
ends, with its ``config.yaml``, ``metrics.jsonl`` and ``metrics.json`` as artifacts.

The study is the truth and the runs a view that converges to it: a write that fails is
retried briefly, then caught up by a reconcile from the study (``coordinator``,
``reconcile``, ``ledger``) at the next chance; never at the cost of a trial.

Modules: ``common`` (tags, the backend protocol, what a run should hold), ``mlflow_backend``,
``wandb_backend``, ``reconcile``, ``ledger``, ``coordinator`` (the hooks, retries, catch-ups,
``open_tracking``), ``registry`` (``export --register``), ``sync`` (``drsearch report``,
``drsearch sync``).
"""

from __future__ import annotations

from drsearch.search.tracking.common import MLFLOW_URI_ENV, metric_name, mlflow_uri
from drsearch.search.tracking.coordinator import (
    Followed,
    StudyTracking,
    TrackedProgress,
    open_tracking,
)
from drsearch.search.tracking.registry import register_export
from drsearch.search.tracking.sync import sync_study

__all__ = [
    "MLFLOW_URI_ENV",
    "Followed",
    "StudyTracking",
    "TrackedProgress",
    "metric_name",
    "mlflow_uri",
    "open_tracking",
    "register_export",
    "sync_study",
]
