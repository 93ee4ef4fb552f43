"""Registering an exported trial in MLflow's model registry (``drsearch export --register``)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from drsearch.config.study import LoadedStudy
from drsearch.search.database import hide_secrets, masked_url
from drsearch.search.tracking.common import TRIAL_TAG, metric_name, mlflow_uri
from drsearch.search.tracking.mlflow_backend import MLflowBackend


def register_export(
    loaded: LoadedStudy,
    number: int,
    files: list[Path],
    evaluation: dict[str, Any] | None,
    name: str,
    what: str | None = None,
) -> tuple[str, str]:
    """Register an export as a new version of model ``name``: an MLflow run (tagged
    ``drsearch.kind: export``) holding ``model/`` = ``files`` (the pinned recipe and its
    weights; or a certified ensemble file and the folder of its members) and the held-out
    evaluation record (``evaluation.json``, operating points included), and a model version
    pointing at it. ``what`` describes it (default: trial ``number``). Its version number and
    where (secrets masked)."""
    what = what or f"trial {number}"
    recipe = files[0]
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
                "mlflow.runName": f"export of {what}"}  # fmt: skip
        run = client.create_run(backend.experiment, tags=tags)
        run_id = run.info.run_id
        for f in files:
            if f.is_dir():  # a certified ensemble's members keep their folder
                client.log_artifacts(run_id, str(f), f"model/{f.name}")
            else:
                client.log_artifact(run_id, str(f), "model")
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
                "drsearch.files": ", ".join(f.name for f in files),
                "drsearch.evaluated": str(bool(evaluation)),
            },  # fmt: skip
            description=f"{what} of study {cfg.name}, exported by drsearch",
        )
    except MlflowException as exc:
        shown = hide_secrets(str(exc), uri).strip()  # masked whole, then cut
        raise ConfigError(
            f"{' and '.join(map(str, files))} are written, but registering {name} in "
            f"{masked_url(uri)} failed: {shown.splitlines()[0][:300] if shown else ''}"
        ) from None
    return str(version.version), masked_url(uri)
