"""The Ray Tune executor: trials asked from the Optuna study, run by Ray, pruned by ASHA.

drsearch uses its own ``Searcher`` instead of Ray's stock ``OptunaSearch``, which (ray 2.60)
stores ASHA-stopped trials as COMPLETE, drops the result that triggered the stop, and links
no Optuna trial to its Ray trial. Here the driver alone writes to the study, each Ray result
is recorded idempotently, the result that ended a trial is recorded too, and a trial stopped
by ASHA before ``max_epochs`` is PRUNED. ``Tuner.restore`` is never used: a re-run continues
the study from the database, the single source of truth.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from drsearch.runners.common import (
    StudyProgress,
    TrialContext,
    finish_trial,
    record_epoch,
    start_trial,
)
from drsearch.storage import StudyStore
from drsearch.study import LoadedStudy

RAY_ENV = {
    "RAY_AUTH_MODE": "disabled",  # otherwise Ray writes a token into the home folder
    "TUNE_DISABLE_AUTO_CALLBACK_LOGGERS": "1",  # no CSV/JSON/TensorBoard files per trial
    "RAY_AIR_NEW_OUTPUT": "0",
    "TUNE_MAX_PENDING_TRIALS_PG": "1",
    "RAY_DEDUP_LOGS": "0",
    "RAY_TRAIN_V2_ENABLED": "0",
}


def ray_env() -> None:
    for key, value in RAY_ENV.items():
        os.environ.setdefault(key, value)


@contextlib.contextmanager
def ray_session(address: str | None, num_cpus: float | None = None) -> Iterator[None]:
    """``ray.init`` once (a local instance, or ``address`` of a cluster) and shut down after."""
    ray_env()
    import ray

    if ray.is_initialized():
        yield
        return
    kwargs: dict[str, Any] = {
        "include_dashboard": False,
        "log_to_driver": False,
        "logging_level": "ERROR",
        "configure_logging": True,
    }
    if address:
        ray.init(address=address, **kwargs)
    else:
        temp = Path(tempfile.gettempdir()) / f"drsearch-ray-{os.getuid()}"
        ray.init(num_cpus=int(num_cpus) if num_cpus else None, _temp_dir=str(temp), **kwargs)
    try:
        yield
    finally:
        ray.shutdown()


def _trainable(config: dict[str, Any]) -> None:
    """Runs in a Ray worker: one trial, each epoch reported to Tune."""
    import ray
    from ray import tune

    from drsearch.config.recipe import Recipe
    from drsearch.objective import execute_trial

    node = ray.get_runtime_context().get_node_id()
    recipe = Recipe.model_validate(config["recipe"])
    run_dir = Path(config["run_dir"])
    resume = (run_dir / "checkpoints" / "last.pt").is_file()  # a retry after a worker crash

    def report(payload: dict[str, Any]) -> None:
        tune.report(payload | {"ray_node_id": node})

    final = execute_trial(recipe, run_dir, report, config["pruning_metric"], resume=resume)
    report(final)


def _searcher_class() -> type:
    from ray.tune.search import Searcher

    class StudySearcher(Searcher):
        """Asks the Optuna study for each Ray trial and records every result in it."""

        def __init__(
            self,
            store: StudyStore,
            loaded: LoadedStudy,
            n_trials: int,
            progress: StudyProgress,
            deadline: float | None,
        ) -> None:
            super().__init__(metric="value", mode="max")
            self.store, self.loaded, self.progress = store, loaded, progress
            self.n_trials, self.deadline = n_trials, deadline
            self.started = 0
            self.active: dict[str, TrialContext] = {}

        def suggest(self, trial_id: str) -> dict[str, Any] | str | None:
            while self.started < self.n_trials:
                if self.deadline is not None and time.time() >= self.deadline:
                    break
                self.started += 1
                ctx = start_trial(
                    self.store,
                    self.loaded,
                    self.progress,
                    threads=max(1, int(self.loaded.config.resources.cpus_per_trial)),
                )
                if ctx is None:
                    continue  # its recipe was impossible: already recorded as FAIL
                self.store.set_user_attrs(ctx.trial_id, {"ray_trial_id": trial_id})
                self.active[trial_id] = ctx
                return {
                    "trial_number": ctx.number,
                    "recipe": ctx.recipe.model_dump(mode="json"),
                    "run_dir": str(ctx.run_dir),
                    "pruning_metric": self.loaded.config.pruner.metric,
                }
            return Searcher.FINISHED

        def on_trial_result(self, trial_id: str, result: dict[str, Any]) -> None:
            result = _nested(result)
            ctx = self.active.get(trial_id)
            if ctx is not None and not _is_final(result):
                record_epoch(self.store, ctx, result, self.progress)

        def on_trial_complete(
            self, trial_id: str, result: dict[str, Any] | None = None, error: bool = False
        ) -> None:
            ctx = self.active.pop(trial_id, None)
            if ctx is None:
                return
            result = _nested(result) if result else None
            if result and not _is_final(result):
                record_epoch(self.store, ctx, result, self.progress)  # the stop's own result
            if error:
                outcome = ctx.tracker.outcome(
                    {
                        "drsearch_failed": "the Ray worker failed (retries exhausted); see the "
                        "Ray logs"
                    },
                    stopped_by_scheduler=False,
                )
            else:
                final = result if result and _is_final(result) else None
                outcome = ctx.tracker.outcome(final, stopped_by_scheduler=final is None)
            finish_trial(
                self.store,
                ctx,
                outcome,
                self.progress,
                {"executor": "ray", "ray_trial_id": trial_id},
            )

        def __getstate__(self) -> dict[str, Any]:
            # Tuner pickles its search algorithm for Tuner.restore, which drsearch never uses;
            # the live searcher (with its database connection) stays in the driver.
            return {"n_trials": self.n_trials}

        def save(self, checkpoint_path: str) -> None:
            """Nothing to save: the Optuna study is the state."""

        def restore(self, checkpoint_path: str) -> None:
            """Nothing to restore: a re-run continues from the Optuna study."""

    return StudySearcher


def _nested(result: dict[str, Any] | None) -> dict[str, Any]:
    """Undo Tune's flattening of nested results (``best/accuracy`` -> ``best.accuracy``)."""
    out: dict[str, Any] = {}
    for key, value in (result or {}).items():
        node = out
        *parents, last = str(key).split("/")
        for part in parents:
            node = node.setdefault(part, {})
        node[last] = value
    return out


def _is_final(result: dict[str, Any]) -> bool:
    return bool(result.get("drsearch_done") or result.get("drsearch_failed"))


def run_ray(
    store: StudyStore,
    loaded: LoadedStudy,
    n_trials: int,
    progress: StudyProgress,
    deadline: float | None,
) -> None:
    """Run up to ``n_trials`` trials on Ray Tune with ASHA, within ``deadline``."""
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler

    cfg = loaded.config
    searcher = _searcher_class()(store, loaded, n_trials, progress, deadline)
    if cfg.pruner.enabled:
        scheduler: Any = ASHAScheduler(
            time_attr="epoch",
            max_t=loaded.max_epochs,
            grace_period=cfg.pruner.grace_period,
            reduction_factor=cfg.pruner.reduction_factor,
        )
    else:
        scheduler = FIFOScheduler()
    resources = {"cpu": cfg.resources.cpus_per_trial, "gpu": cfg.resources.gpus_per_trial}
    tuner = tune.Tuner(
        tune.with_resources(_trainable, resources),
        tune_config=tune.TuneConfig(
            search_alg=searcher,
            scheduler=scheduler,
            metric="value",
            mode="max",
            num_samples=n_trials,
            max_concurrent_trials=cfg.resources.max_concurrent,
            reuse_actors=cfg.ray.reuse_actors,
        ),
        run_config=tune.RunConfig(
            name=f"run-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}",
            storage_path=str((cfg.study_dir / "ray").resolve()),
            failure_config=tune.FailureConfig(max_failures=cfg.ray.retries),
            verbose=0,
            log_to_file=True,
        ),
    )
    tuner.fit()
