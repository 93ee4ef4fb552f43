"""PostgreSQL storage, against a real server (CI starts one; set DRSEARCH_TEST_POSTGRES)."""

from __future__ import annotations

import os
import uuid
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from drsearch.config.study import load_study
from drsearch.search.runners import run_study
from tests.conftest import write_tiny_study

URL = os.environ.get("DRSEARCH_TEST_POSTGRES")
pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(not URL, reason="set DRSEARCH_TEST_POSTGRES to a PostgreSQL URL"),
]


def test_study_in_postgresql(tmp_path: Path, tiny_dataset: Path) -> None:
    name = f"pg-{uuid.uuid4().hex[:8]}"
    path = write_tiny_study(
        tmp_path,
        tiny_dataset,
        "optim.lr: {type: float, low: 1.0e-4, high: 1.0e-2, log: true}\n",
        name=name,
        storage=URL,
        recipe_overrides={"train.epochs": 2},
        pruner={"enabled": False},
    )
    summary = run_study(load_study(path))
    assert summary.counts.complete == 2
    assert summary.storage.startswith("postgresql") and ":***@" in summary.storage
    study = optuna.load_study(study_name=name, storage=URL)
    assert [t.state for t in study.trials] == [TrialState.COMPLETE] * 2
    assert all(len(t.user_attrs["sensitivity"]) == 5 for t in study.trials)
    assert study.trials[0].intermediate_values.keys() == {1, 2}


def test_a_runner_stopped_by_an_error_naming_its_storage_stores_no_password(
    tmp_path: Path, tiny_dataset: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A runner that stops on an error whose text holds the storage URL (a driver's message)
    lets go of its trial with the reason (``interrupted_by``), the password masked."""
    from sqlalchemy.engine import make_url

    import drsearch.search.runners.local as local

    assert URL is not None
    password = make_url(URL).password
    assert password
    name = f"pg-{uuid.uuid4().hex[:8]}"
    path = write_tiny_study(
        tmp_path, tiny_dataset, "optim.lr: {type: float, low: 1.0e-4, high: 1.0e-2, log: true}\n",
        name=name, storage=URL, pruner={"enabled": False},
    )  # fmt: skip

    def fails(store, loaded, ctx, progress):  # type: ignore[no-untyped-def]
        raise RuntimeError(f"lost the connection to {URL} (password {password})")

    monkeypatch.setattr(local, "_run_one", fails)
    with pytest.raises(RuntimeError):
        run_study(load_study(path))
    (trial,) = optuna.load_study(study_name=name, storage=URL).trials
    said = trial.user_attrs["interrupted_by"]
    assert said.startswith("the runner stopped on RuntimeError: lost the connection to")
    assert password not in said and "***" in said
