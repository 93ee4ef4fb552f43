"""Drawing a trial's configuration, never one the study already holds.

A study's sampler can propose a configuration some trial already ran, runs or waits to run: a
study warm-started from another draws from the same streams unless the seeds differ (see
``samplers.trial_seed``), a small categorical space runs out of new combinations, a queued
baseline may coincide with a draw. Running it again buys nothing. So a new trial's
configuration is drawn first on a stand-in (``_DryTrial``: the sampler asked exactly as
``optuna.Trial`` asks it, nothing written), compared with every other trial's, redrawn with
the next seed of the trial when it is taken (up to ``MAX_DRAWS`` draws in all), and only
then asked of the real trial, which the sampler answers with the configuration chosen
(``TrialSeededSampler.force``). The first draw is the one the trial would have made anyway,
so a study whose draws never coincide samples exactly as before. After ``MAX_DRAWS`` taken
draws (the space is exhausted, or nearly), the last one runs and the run's summary names the
trials that ran the same parameters.

A queued trial (the baseline, a warm start, a re-run) is not redrawn: it is queued to run
that configuration.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Sequence
from typing import Any

import optuna
from optuna.distributions import (
    BaseDistribution,
    CategoricalDistribution,
    FloatDistribution,
    IntDistribution,
)
from optuna.trial import FrozenTrial

from drsearch.config.recipe import Recipe
from drsearch.config.space import SearchSpace, sample
from drsearch.search.samplers import TrialSeededSampler

#: How many configurations a new trial draws at most before it runs one some trial holds.
MAX_DRAWS = 20


def config_key(params: dict[str, Any]) -> str:
    """A configuration as one comparable string (the same parameters, the same key)."""
    return json.dumps(params, sort_keys=True, default=str)


def held_configurations(trials: Sequence[FrozenTrial], number: int) -> set[str]:
    """Every configuration the study's trials other than ``number`` hold: finished, running,
    paused, or queued (a queued trial's configuration is its fixed parameters)."""
    held = set()
    for t in trials:
        if t.number == number:
            continue
        params = t.params or t.system_attrs.get("fixed_params") or {}
        if params:
            held.add(config_key(dict(params)))
    return held


def draw(trial: optuna.Trial, space: SearchSpace, base: Recipe) -> tuple[dict[str, Any], int]:
    """The trial's configuration, drawn until no other trial of the study holds it (at most
    ``MAX_DRAWS`` draws); the parameters and how many draws it took. A queued trial, or one
    whose sampler is not drsearch's, is asked directly."""
    study = trial.study
    sampler = study.sampler
    frozen = study._storage.get_trial(trial._trial_id)
    if not isinstance(sampler, TrialSeededSampler) or frozen.system_attrs.get("fixed_params"):
        return sample(trial, space, base), 1
    held = held_configurations(study.get_trials(deepcopy=False), frozen.number)
    params: dict[str, Any] = {}
    draws = 0
    for attempt in range(MAX_DRAWS):
        if attempt:
            sampler.redraw(study, frozen, attempt)
        draws += 1
        params = sample(_DryTrial(study, frozen, sampler), space, base)  # type: ignore[arg-type]
        if config_key(params) not in held:
            break
    with sampler.force(params):
        chosen = sample(trial, space, base)
    return chosen, draws


class _DryTrial:
    """Asks a sampler for a trial's parameters exactly as ``optuna.Trial`` does (relative
    parameters first, then each parameter on its own), writing nothing to the storage."""

    def __init__(self, study: optuna.Study, frozen: FrozenTrial, sampler: Any) -> None:
        self.study = study
        self._sampler = sampler
        self._frozen = copy.copy(frozen)
        self._frozen.params = dict(frozen.params)
        self._frozen.distributions = dict(frozen.distributions)
        self._relative: dict[str, Any] | None = None
        self._relative_space: dict[str, BaseDistribution] = {}

    def _suggest(self, name: str, distribution: BaseDistribution) -> Any:
        if name in self._frozen.params:
            return self._frozen.params[name]
        if distribution.single():
            single = isinstance(distribution, CategoricalDistribution)
            value = distribution.choices[0] if single else distribution.low  # type: ignore[attr-defined]
        elif name in self._relative_params() and self._relative_space.get(name) == distribution:
            value = self._relative_params()[name]
        else:
            value = self._sampler.sample_independent(self.study, self._frozen, name, distribution)
        distribution.to_internal_repr(value)  # as optuna.Trial validates it (NaN raises)
        self._frozen.params[name] = value
        self._frozen.distributions[name] = distribution
        return value

    def _relative_params(self) -> dict[str, Any]:
        if self._relative is None:  # lazily, when first needed, as optuna.Trial does
            self._relative_space = self._sampler.infer_relative_search_space(
                self.study, self._frozen
            )
            self._relative = self._sampler.sample_relative(
                self.study, self._frozen, self._relative_space
            )
        return self._relative

    def suggest_float(
        self, name: str, low: float, high: float, *, step: float | None = None, log: bool = False
    ) -> float:
        return self._suggest(name, FloatDistribution(low, high, log=log, step=step))

    def suggest_int(
        self, name: str, low: int, high: int, *, step: int = 1, log: bool = False
    ) -> int:
        return int(self._suggest(name, IntDistribution(low, high, log=log, step=step)))

    def suggest_categorical(self, name: str, choices: Sequence[Any]) -> Any:
        return self._suggest(name, CategoricalDistribution(choices))
