"""Samplers and the pruner of a study.

A seeded sampler is rebuilt before every trial with a seed derived from the study's name, the
study seed and the trial number (``TrialSeededSampler``): reproducible, never repeated by a
restart or a second runner, and not shared with another study (a study warm-started from one
with the same seed would otherwise draw that study's configurations again). Stopping ASHA is
Optuna's ``SuccessiveHalvingPruner`` (``make_pruner``); promotion ASHA is drsearch's own rung
scheduler (``scheduler.py``)."""

from __future__ import annotations

import contextlib
import copy
import functools
import hashlib
import random
import warnings
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import optuna
from optuna.distributions import BaseDistribution
from optuna.samplers import BaseSampler
from optuna.trial import FrozenTrial, TrialState

from drsearch.config.study import StudyConfig, pruner_rungs
from drsearch.search.scheduler import PAUSED_ATTR
from drsearch.search.trial import RANKED_ATTR


def trial_seed(seed: int, number: int, study: str = "", attempt: int = 0) -> int:
    """The sampler seed of trial ``number`` of the study named ``study``: fixed by the study,
    its seed and the trial alone; ``attempt`` > 0 for a redraw (``draws.draw``)."""
    text = f"drsearch-sampler:{study}:{seed}:{number}" + (f":{attempt}" if attempt else "")
    digest = hashlib.sha256(text.encode()).digest()
    return int.from_bytes(digest[:4], "big")


class _PausedAsPruned:
    """The study as a sampler should see it under promotion ASHA: a trial paused at a rung
    (RUNNING in the storage, needing no worker) is a trial stopped there, as a PRUNED trial
    with its curve so far. Without this, TPE's ``constant_liar`` takes every paused trial for
    a running one and counts it as a bad result, and ``n_startup_trials`` never counts it.
    Everything else is the study's own."""

    def __init__(self, study: optuna.Study) -> None:
        self._study = study

    def __getattr__(self, name: str) -> Any:
        return getattr(self._study, name)

    def _get_trials(
        self,
        deepcopy: bool = True,
        states: Sequence[TrialState] | None = None,
        use_cache: bool = False,
    ) -> list[FrozenTrial]:
        wanted = None if states is None else set(states)
        fetch = None if wanted is None else tuple(wanted | {TrialState.RUNNING})
        out = []
        for t in self._study._get_trials(deepcopy=deepcopy, states=fetch, use_cache=use_cache):
            if t.state == TrialState.RUNNING and t.system_attrs.get(PAUSED_ATTR) is not None:
                t = copy.copy(t)
                t.state = TrialState.PRUNED
            if wanted is None or t.state in wanted:
                out.append(t)
        return out

    def get_trials(
        self, deepcopy: bool = True, states: Sequence[TrialState] | None = None
    ) -> list[FrozenTrial]:
        return self._get_trials(deepcopy=deepcopy, states=states)

    @property
    def trials(self) -> list[FrozenTrial]:
        return self.get_trials()


class _AtTopRung(_PausedAsPruned):
    """The study as BOHB's model sees it (``sampler.fit_on: top_rung``): every trial at the
    highest level that at least ``n_startup_trials`` trials, and one more than the
    parameters (as BOHB asks), reached, as a finished trial whose value is its value there;
    the trials below that level are left out, trials still training below it are kept as
    they are (for ``constant_liar``). Levels are ASHA's rung epochs and the last epoch a
    complete trial trained; a trial that completed before a level (early stopping) counts there
    with its last value. Until some level has enough trials, no finished trial is shown and
    TPE draws at random.

    A value is what the study ranks: its objective (primary minus the constraints' penalty)
    at the trial's best epoch up to that level, as its final value would be had it stopped
    there, whatever the pruning metric (``RANKED_ATTR``). So a DR study's model learns where
    the severe-grade constraints hold, not only where accuracy is high. Where a trial at the
    level lacks it (recorded before it was stored), every trial counts by its pruning value
    instead: one scale. Optuna's constraint lists are left out of the view: the penalty is in
    the values already.

    Optuna's own view (``fit_on: outcomes``) ranks a pruned trial below every complete one and
    by how far it got, which under ASHA teaches TPE mostly from trials stopped after one
    epoch; BOHB (Falkner et al., 2018) models the largest budget with enough observations."""

    def __init__(self, study: optuna.Study, rungs: Sequence[int], n_startup: int) -> None:
        super().__init__(study)
        self._rungs = rungs
        self._n_startup = n_startup

    def _get_trials(
        self,
        deepcopy: bool = True,
        states: Sequence[TrialState] | None = None,
        use_cache: bool = False,
    ) -> list[FrozenTrial]:
        every = super()._get_trials(deepcopy=deepcopy, states=None, use_cache=use_cache)
        seen = [t for t in every if t.state in _OBSERVED and t.intermediate_values]
        reached = max((max(t.intermediate_values) for t in seen), default=0)
        end = max(
            (max(t.intermediate_values) for t in seen if t.state == TrialState.COMPLETE),
            default=0,
        )
        levels = sorted({r for r in self._rungs if r <= reached} | ({end} if end else set()))
        need = max(self._n_startup, max((len(t.distributions) for t in seen), default=0) + 1)
        level = next(
            (e for e in reversed(levels)
             if sum(_value_at(t, e) is not None for t in seen) >= need),
            None,
        )  # fmt: skip
        # one scale for all: the pruning values wherever a trial lacks the objective (trials
        # recorded before it was stored, in a continued study)
        at_level = [] if level is None else [t for t in seen if _value_at(t, level) is not None]
        ranked = level is not None and all(_value_at(t, level, True) is not None for t in at_level)
        out = []
        for t in every:
            value = (
                None if level is None or t.state not in _OBSERVED else _value_at(t, level, ranked)
            )
            if value is not None:
                t = copy.copy(t)
                t.state, t.values = TrialState.COMPLETE, [value]
                t.system_attrs = {
                    k: v for k, v in t.system_attrs.items() if k.split(":")[0] != "constraints"
                }  # Optuna's list, and its per-name keys (``constraints:NAME``)
            elif t.state != TrialState.RUNNING:
                continue
            if states is None or t.state in states:
                out.append(t)
        return out


#: Trials whose value at a level is known (a paused trial is PRUNED in the parent view).
_OBSERVED = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING)


def _value_at(trial: FrozenTrial, level: int, ranked: bool = False) -> float | None:
    """The trial's pruning value at epoch ``level`` or, with ``ranked``, the study's objective
    had it stopped there (``RANKED_ATTR``; ``None`` where not stored); a complete trial that
    ended before it (early stopping), its last one."""
    values = trial.intermediate_values
    if level not in values:
        if trial.state != TrialState.COMPLETE or not values or max(values) > level:
            return None
        level = max(values)
    return trial.system_attrs.get(f"{RANKED_ATTR}{level}") if ranked else values[level]


class TrialSeededSampler(BaseSampler):
    """A sampler rebuilt before every trial with a seed derived from the study seed and the
    trial number.

    A seeded study stays reproducible (trial ``n`` always draws from the same stream), and a
    continued study or a second runner never replays an earlier trial's draws, as rebuilding
    one sampler with the study seed in every process would. The samplers drsearch uses keep
    their state in the study (TPE, GP and random read the history each time; CMA-ES stores
    its optimizer in trial attributes), so a fresh instance per trial loses nothing.
    """

    def __init__(
        self,
        factory: Callable[[int | None], BaseSampler],
        seed: int | None,
        random_fraction: float = 0.0,
        view: Callable[[optuna.Study], Any] = _PausedAsPruned,
        study: str = "",
    ) -> None:
        self._factory = factory
        self._seed = seed
        self._random_fraction = random_fraction
        self._view = view
        self._study = study
        self._inner = factory(None if seed is None else trial_seed(seed, -1, study))
        #: the configuration the next suggestions answer with (``force``)
        self._forced: dict[str, Any] | None = None

    def before_trial(self, study: optuna.Study, trial: FrozenTrial) -> None:
        self._prepare(study, trial, 0)

    def redraw(self, study: optuna.Study, trial: FrozenTrial, attempt: int) -> None:
        """Start draw ``attempt`` (> 0) of the trial: its own seed for that attempt."""
        self._prepare(study, trial, attempt)

    def _prepare(self, study: optuna.Study, trial: FrozenTrial, attempt: int) -> None:
        seed = (
            None
            if self._seed is None
            else trial_seed(self._seed, trial.number, self._study, attempt)
        )
        if seed is not None or self._random_fraction > 0 or attempt:
            self._inner = self._factory(seed)
        if self._random_fraction > 0:
            # the same trial always makes the same choice (its seed), an unseeded study a
            # fresh one; a random trial is still seen by the model-based sampler afterwards
            draw = random.Random(seed).random()
            if draw < self._random_fraction:
                self._inner = optuna.samplers.RandomSampler(seed=seed)
        self._inner.before_trial(study, trial)

    @contextlib.contextmanager
    def force(self, params: dict[str, Any]) -> Iterator[None]:
        """Answer every suggestion with ``params`` (a configuration drawn beforehand,
        ``draws.draw``) until the block ends."""
        self._forced = params
        try:
            yield
        finally:
            self._forced = None

    def infer_relative_search_space(
        self, study: optuna.Study, trial: FrozenTrial
    ) -> dict[str, BaseDistribution]:
        if self._forced is not None:
            return {}  # every parameter is answered on its own, from the drawn configuration
        return self._inner.infer_relative_search_space(self._view(study), trial)

    def sample_relative(
        self, study: optuna.Study, trial: FrozenTrial, search_space: dict[str, BaseDistribution]
    ) -> dict[str, Any]:
        if self._forced is not None:
            return {k: self._forced[k] for k in search_space if k in self._forced}
        return self._inner.sample_relative(self._view(study), trial, search_space)

    def sample_independent(
        self,
        study: optuna.Study,
        trial: FrozenTrial,
        param_name: str,
        param_distribution: BaseDistribution,
    ) -> Any:
        if self._forced is not None and param_name in self._forced:
            return self._forced[param_name]
        view = self._view(study)
        return self._inner.sample_independent(view, trial, param_name, param_distribution)

    def after_trial(
        self,
        study: optuna.Study,
        trial: FrozenTrial,
        state: TrialState,
        values: Sequence[float] | None,
    ) -> None:
        self._inner.after_trial(study, trial, state, values)

    def reseed_rng(self) -> None:
        self._inner.reseed_rng()


def make_sampler(config: StudyConfig) -> BaseSampler:
    """The study's sampler, seeded per trial (``TrialSeededSampler``). TPE runs with
    ``constant_liar``: trials running in other workers or runners count as bad results, so
    concurrent trials are not proposed next to each other."""
    s = config.sampler

    def build(seed: int | None) -> BaseSampler:
        if s.name == "random":
            return optuna.samplers.RandomSampler(seed=seed)
        if s.name == "gp":
            return optuna.samplers.GPSampler(seed=seed, n_startup_trials=s.n_startup_trials)
        if s.name == "cmaes":
            return optuna.samplers.CmaEsSampler(
                seed=seed, n_startup_trials=s.n_startup_trials, warn_independent_sampling=False
            )
        with warnings.catch_warnings():  # multivariate/group are "experimental" since 2.2
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            return optuna.samplers.TPESampler(
                seed=seed,
                n_startup_trials=s.n_startup_trials,
                multivariate=s.multivariate,
                group=s.multivariate and s.group,
                constant_liar=s.constant_liar,
            )

    fraction = s.random_fraction if s.name != "random" else 0.0
    view: Callable[[optuna.Study], Any] = _PausedAsPruned
    if s.fit_on == "top_rung":  # the rungs below the epochs any trial reached, in the view
        rungs = pruner_rungs(config, 10**6)
        view = functools.partial(_AtTopRung, rungs=rungs, n_startup=s.n_startup_trials)
    return TrialSeededSampler(build, s.seed, fraction, view, stream_key(config))


def stream_key(config: StudyConfig) -> str:
    """What keys a study's sampler streams beside its seed: its name and, for a study
    warm-started from another, that source (a source of the same name and seed would
    otherwise have drawn exactly the configurations this study draws next)."""
    ws = getattr(config, "warm_start", None)
    if ws is None:
        return config.name
    return f"{config.name}|warm start from {ws.study or ws.study_name}"


def make_pruner(config: StudyConfig) -> optuna.pruners.BasePruner:
    """ASHA as Optuna implements it (``SuccessiveHalvingPruner``), for both executors.

    Its rungs are stored with the trials, so they survive a restart and are shared by every
    runner of the study; ``drsearch.search.runners.common.after_epoch`` asks it after each epoch.
    """
    p = config.pruner
    if not p.enabled:
        return optuna.pruners.NopPruner()
    return optuna.pruners.SuccessiveHalvingPruner(
        min_resource=p.grace_period,
        reduction_factor=p.reduction_factor,
        min_early_stopping_rate=0,
    )
