"""The Ray Tune executor: trials asked from the Optuna study, run by Ray, pruned by ASHA.

drsearch uses its own ``Searcher`` instead of Ray's stock ``OptunaSearch``, which (ray 2.60)
stores ASHA-stopped trials as COMPLETE, drops the result that triggered the stop, and links
no Optuna trial to its Ray trial; and its own ``TrialScheduler`` instead of Ray's
``ASHAScheduler``, whose rungs live in one process and start empty on every run. Here the
driver alone writes to the study; every result is recorded idempotently and judged by the
same ``after_epoch`` as the local executor (ASHA's rungs are in the study, shared by runners
and kept across runs); the outcome comes from the trial's ``TrialTracker``.
``Tuner.restore`` is never used: a re-run continues the study from the database, the single
source of truth.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from drsearch.config.study import LoadedStudy
from drsearch.errors import ConfigError
from drsearch.search.deadline import Deadline
from drsearch.search.runners.common import (
    NoTrial,
    StudyProgress,
    TrialContext,
    after_epoch,
    finish_trial,
    record_epoch,
    start_trial,
    study_runs,
)
from drsearch.search.store import StudyStore
from drsearch.search.trial import EpochReport, TrialEnd, from_message

RAY_ENV = {
    "RAY_AUTH_MODE": "disabled",  # otherwise Ray writes a token into the home folder
    "TUNE_DISABLE_AUTO_CALLBACK_LOGGERS": "1",  # no CSV/JSON/TensorBoard files per trial
    "RAY_AIR_NEW_OUTPUT": "0",
    "TUNE_MAX_PENDING_TRIALS_PG": "1",
    "RAY_DEDUP_LOGS": "0",
    "RAY_TRAIN_V2_ENABLED": "0",
    # Ctrl-C reaches drsearch (which marks the running trials interrupted and says how to
    # continue) instead of Tune's handler, which would stop the trials as if they had ended
    "TUNE_DISABLE_SIGINT_HANDLER": "1",
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
    """Runs in a Ray worker: one trial, each epoch reported to Tune, then how it ended."""
    import ray
    from ray import tune

    from drsearch.config.recipe import Recipe
    from drsearch.search.trial import to_message
    from drsearch.search.worker import execute_trial

    node = ray.get_runtime_context().get_node_id()
    recipe: Recipe = config["recipe"]
    run_dir = Path(config["run_dir"])
    # a Ray retry after a worker crash continues from the trial's own checkpoint
    resume = config["resume"] or (run_dir / "checkpoints" / "last.pt").is_file()

    def report(item: Any) -> None:
        tune.report(to_message(item) | {"ray_node_id": node})

    report(execute_trial(recipe, run_dir, report, config["pruning_metric"], resume=resume))


#: Seconds a Ray runner waits, without blocking Tune, before asking the study again for a
#: trial while another runner's trial may still make a paused one promotable.
WAIT_S = 0.5


def _classes() -> tuple[type, type]:
    from ray.tune.schedulers import FIFOScheduler, TrialScheduler
    from ray.tune.search import Searcher

    class StudySearcher(Searcher):
        """Claims a trial of the Optuna study for each Ray trial and records how it ended."""

        def __init__(
            self,
            store: StudyStore,
            loaded: LoadedStudy,
            progress: StudyProgress,
            deadline: Deadline | None,
        ) -> None:
            super().__init__(metric=None, mode=None)
            self.store, self.loaded, self.progress = store, loaded, progress
            self.deadline = deadline
            self.active: dict[str, TrialContext] = {}
            self.ask_again_at = 0.0  # monotonic time before which suggest() does not ask

        def suggest(self, trial_id: str) -> dict[str, Any] | str | None:
            if time.monotonic() < self.ask_again_at:
                return None  # waited recently: Tune asks again on a later step
            while True:
                if self.deadline is not None and self.deadline.passed() and self.active:
                    # the time limit is reached: nothing new starts; once this runner's trials
                    # have ended, the leader of the highest rung is finished (start_trial)
                    self.ask_again_at = time.monotonic() + WAIT_S
                    return None
                ctx = start_trial(
                    self.store,
                    self.loaded,
                    self.progress,
                    threads=max(1, int(self.loaded.config.resources.cpus_per_trial)),
                    deadline=self.deadline,
                )
                if ctx is NoTrial.SPENT:
                    break
                if ctx is NoTrial.NOT_STARTED:
                    continue  # its recipe was impossible: already recorded as FAIL
                if ctx is NoTrial.WAIT:  # a running trial may still make a paused one promotable
                    # never sleep here: this is Tune's event loop (results, other trials);
                    # the study is asked again after WAIT_S, however often Tune asks
                    self.ask_again_at = time.monotonic() + WAIT_S
                    return None
                self.store.set_user_attrs(ctx.trial_id, {"ray_trial_id": trial_id})
                self.active[trial_id] = ctx
                return {
                    "trial_number": ctx.number,
                    "recipe": ctx.recipe,  # the validated object itself: parsed once
                    "run_dir": str(ctx.run_dir),
                    "pruning_metric": self.loaded.config.pruner.metric,
                    "resume": ctx.resume,
                }
            return Searcher.FINISHED

        def on_trial_result(self, trial_id: str, result: dict[str, Any]) -> None:
            """Nothing: ``StudyScheduler`` records each result and decides on it."""

        def on_trial_complete(
            self, trial_id: str, result: dict[str, Any] | None = None, error: bool = False
        ) -> None:
            ctx = self.active.pop(trial_id, None)
            if ctx is None:
                return
            item = from_message(result)
            if isinstance(item, EpochReport):
                record_epoch(self.store, ctx, item, self.progress)
            elif isinstance(item, TrialEnd):
                ctx.end = item
            if error:
                reason = "the Ray worker failed (retries exhausted); see the Ray logs"
                ctx.end = TrialEnd("failed", reason)
            ctx.extra_attrs |= {"executor": "ray", "ray_trial_id": trial_id}
            finish_trial(self.store, ctx, self.progress)

        def __getstate__(self) -> dict[str, Any]:
            # Tuner pickles its search algorithm for Tuner.restore, which drsearch never uses;
            # the live searcher (with its database connection) stays in the driver.
            return {}

        def save(self, checkpoint_path: str) -> None:
            """Nothing to save: the Optuna study is the state."""

        def restore(self, checkpoint_path: str) -> None:
            """Nothing to restore: a re-run continues from the Optuna study."""

    class StudyScheduler(FIFOScheduler):
        """Tune's side of pruning: each result is recorded in the study and judged by
        ``after_epoch``, the same function the local executor calls."""

        def __init__(self, searcher: StudySearcher) -> None:
            super().__init__()
            self.searcher = searcher

        def on_trial_result(self, tune_controller: Any, trial: Any, result: dict) -> str:
            ctx = self.searcher.active.get(trial.trial_id)
            item = from_message(result)
            if ctx is None or item is None:
                return TrialScheduler.CONTINUE
            if result.get("ray_node_id"):
                ctx.extra_attrs["ray_node_id"] = result["ray_node_id"]
            if isinstance(item, TrialEnd):
                ctx.end = item
                return TrialScheduler.CONTINUE
            decision = after_epoch(self.searcher.store, ctx, item, self.searcher.progress)
            # a paused trial (promotion ASHA) ends its Ray trial too: its checkpoint is on
            # disk, and a promotion resumes it from there as a new Ray trial
            return TrialScheduler.CONTINUE if decision == "continue" else TrialScheduler.STOP

        def __getstate__(self) -> dict[str, Any]:
            return {}

    return StudySearcher, StudyScheduler


def _pending_watch(loaded: LoadedStudy) -> Any:
    """A Tune callback that stops a run whose trial Ray keeps PENDING for
    ``ray.pending_timeout_s`` while nothing runs: nothing could ever place it (a trial that
    waits behind running ones is queued, not stuck)."""
    from ray.tune import Callback

    cfg = loaded.config
    timeout = cfg.ray.pending_timeout_s

    class PendingWatch(Callback):
        def __init__(self) -> None:
            self.since: dict[str, float] = {}
            self.error: ConfigError | None = None

        def on_step_begin(self, iteration: int, trials: list[Any], **info: Any) -> None:
            now = time.monotonic()
            running = any(t.status == "RUNNING" for t in trials)
            pending = {t.trial_id for t in trials if t.status == "PENDING"}
            self.since = {k: v for k, v in self.since.items() if k in pending}
            for trial_id in pending:
                self.since.setdefault(trial_id, now)
            if running or not self.since or now - min(self.since.values()) < timeout:
                return
            self.error = ConfigError(unplaceable_message(loaded, timeout))
            raise self.error

    return PendingWatch()


def unplaceable_message(loaded: LoadedStudy, waited: float) -> str:
    """Why no trial runs: what each asks for against what the cluster has."""
    import ray

    res = loaded.config.resources

    def amounts(found: dict[str, float]) -> str:
        return f"{found.get('CPU', 0):g} CPUs, {found.get('GPU', 0):g} GPUs"

    return (
        f"{loaded.path}: Ray kept a trial PENDING for {waited:g} s with no trial running: each "
        f"trial asks {res.cpus_per_trial:g} CPUs and {res.gpus_per_trial:g} GPUs "
        "(resources.cpus_per_trial, resources.gpus_per_trial) and the cluster has "
        f"{amounts(ray.cluster_resources())} in all ({amounts(ray.available_resources())} "
        "free); lower them, add nodes that have them, or raise ray.pending_timeout_s while an "
        "autoscaler adds nodes"
    )


def run_ray(
    store: StudyStore,
    loaded: LoadedStudy,
    progress: StudyProgress,
    deadline: Deadline | None,
) -> None:
    """Run trials on Ray Tune until the study's budget is spent or the time limit is reached
    (``deadline``: then the leader of the highest rung is finished)."""
    from ray import tune

    cfg = loaded.config
    searcher_class, scheduler_class = _classes()
    searcher = searcher_class(store, loaded, progress, deadline)
    resources = {"cpu": cfg.resources.cpus_per_trial, "gpu": cfg.resources.gpus_per_trial}
    if cfg.resources.memory_gb_per_trial is not None:
        resources["memory"] = cfg.resources.memory_gb_per_trial * 1024**3
    watch = _pending_watch(loaded)
    tuner = tune.Tuner(
        tune.with_resources(_trainable, resources),
        tune_config=tune.TuneConfig(
            search_alg=searcher,
            scheduler=scheduler_class(searcher),
            num_samples=-1,  # until the searcher says the study's budget is spent
            max_concurrent_trials=cfg.resources.max_concurrent,
            reuse_actors=cfg.ray.reuse_actors,
        ),
        run_config=tune.RunConfig(
            name=f"run-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}",
            storage_path=str(study_runs(loaded, store) / "ray"),
            failure_config=tune.FailureConfig(max_failures=cfg.ray.retries),
            verbose=0,
            log_to_file=True,
            callbacks=[watch],
        ),
    )
    try:
        tuner.fit()
    except Exception:
        if watch.error is not None:  # Tune wraps a callback's error: say ours, in one line
            raise watch.error from None
        raise
    if watch.error is not None:
        raise watch.error
