"""TPE's options and a share of random trials (``sampler.random_fraction``)."""

from __future__ import annotations

import random
from types import SimpleNamespace

import optuna

from drsearch.config.study import SamplerConfig
from drsearch.search.samplers import TrialSeededSampler, make_sampler, trial_seed


def test_a_random_fraction_draws_that_share_of_trials_at_random_fixed_by_each_trials_seed() -> None:
    config = SimpleNamespace(
        sampler=SamplerConfig(name="tpe", seed=7, n_startup_trials=0, random_fraction=0.3)
    )
    sampler = make_sampler(config)  # type: ignore[arg-type]
    assert isinstance(sampler, TrialSeededSampler)
    study = optuna.create_study(direction="maximize")
    kinds = []
    for number in range(400):
        trial = SimpleNamespace(number=number)
        sampler.before_trial(study, trial)  # type: ignore[arg-type]
        kinds.append(type(sampler._inner).__name__)
        expected = random.Random(trial_seed(7, number)).random() < 0.3
        assert (kinds[-1] == "RandomSampler") == expected
    share = kinds.count("RandomSampler") / len(kinds)
    assert 0.24 < share < 0.36  # binomial(400, 0.3): 0.3 +- 3 standard deviations
    assert set(kinds) == {"RandomSampler", "TPESampler"}
    # a random sampler is never mixed in by default
    plain = make_sampler(SimpleNamespace(sampler=SamplerConfig(name="tpe", seed=7)))  # type: ignore[arg-type]
    for number in range(50):
        plain.before_trial(study, SimpleNamespace(number=number))  # type: ignore[arg-type]
        assert type(plain._inner).__name__ == "TPESampler"


def test_tpes_options_reach_the_sampler_and_the_default_is_random() -> None:
    assert SamplerConfig().name == "random"  # bench/hpo_lcbench.py's evidence (issue 24)
    study = optuna.create_study(direction="maximize")
    for multivariate, liar in ((True, True), (False, False)):
        config = SimpleNamespace(
            sampler=SamplerConfig(name="tpe", multivariate=multivariate, constant_liar=liar)
        )
        sampler = make_sampler(config)  # type: ignore[arg-type]
        sampler.before_trial(study, SimpleNamespace(number=0))  # type: ignore[arg-type]
        tpe = sampler._inner
        assert isinstance(tpe, optuna.samplers.TPESampler)
        assert (tpe._multivariate, tpe._group, tpe._constant_liar) == (
            multivariate, multivariate, liar
        )  # fmt: skip
