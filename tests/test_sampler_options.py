"""TPE's options and a share of random trials (``sampler.random_fraction``)."""

from __future__ import annotations

import random
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import optuna
from optuna.trial import TrialState

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


def _trial_at(
    study: optuna.Study, x: float, curve: dict[int, float], state: str, constraints: Any = None
) -> None:
    """A trial of ``x`` with ``curve`` (epoch -> value), pruned, complete or still running."""
    trial = study.ask()
    trial.suggest_float("x", 0, 1)
    study._storage.set_trial_param(
        trial._trial_id, "x", x, optuna.distributions.FloatDistribution(0, 1)
    )
    for epoch, value in curve.items():
        study._storage.set_trial_intermediate_value(trial._trial_id, epoch, value)
    if constraints is not None:
        study._storage.set_trial_system_attr(trial._trial_id, "constraints", constraints)
    if state == "pruned":
        study.tell(trial, state=optuna.trial.TrialState.PRUNED)
    elif state == "complete":
        study.tell(trial, max(curve.values()))


def test_top_rung_shows_every_trial_at_the_highest_rung_enough_trials_reached() -> None:
    from drsearch.search.samplers import _AtTopRung

    state = optuna.trial.TrialState
    COMPLETE, PRUNED, RUNNING = state.COMPLETE, state.PRUNED, state.RUNNING
    study = optuna.create_study(direction="maximize")
    for i in range(6):  # pruned at rung 1
        _trial_at(study, i / 10, {1: 0.1 + i / 100}, "pruned")
    for i in range(3):  # reached rung 2, then pruned
        _trial_at(study, 0.6 + i / 10, {1: 0.5, 2: 0.6 + i / 100}, "pruned")
    _trial_at(study, 0.95, {1: 0.5, 2: 0.7, 4: 0.9}, "complete")
    _trial_at(study, 0.05, {1: 0.3}, "running")  # below the level: kept for constant_liar
    levels = [1, 2, 4]
    # need max(n_startup 2, 1 parameter + 1) = 2 trials: rung 4 has 1, rung 2 has 4
    view = _AtTopRung(study, levels, n_startup=2)
    seen = view._get_trials(deepcopy=False, states=(COMPLETE, PRUNED))
    assert sorted((t.params["x"], t.value) for t in seen) == [
        (0.6, 0.6),
        (0.7, 0.61),
        (0.8, 0.62),
        (0.95, 0.7),
    ]
    assert {t.state for t in seen} == {COMPLETE}
    assert [t.params["x"] for t in view._get_trials(deepcopy=False, states=(RUNNING,))] == [0.05]
    # asking for 5 trials drops to rung 1, where all 11 are (the running one has its value)
    view = _AtTopRung(study, levels, n_startup=5)
    seen = view._get_trials(deepcopy=False, states=(COMPLETE,))
    assert len(seen) == 11 and {t.state for t in seen} == {COMPLETE}
    assert view._get_trials(deepcopy=False, states=(RUNNING,)) == []
    # no level with 12: nothing finished is shown, so TPE is still in its start-up
    assert _AtTopRung(study, levels, n_startup=12)._get_trials(states=(COMPLETE, PRUNED)) == []
    # the stored trials are untouched
    assert [t.state for t in study.get_trials()].count(PRUNED) == 9


def test_top_rung_tpe_proposes_where_the_top_rung_is_good_not_where_rung_one_is() -> None:
    """Rung 1 favours x near 0.1 (many trials), rung 4 favours x near 0.8: TPE fitted on the
    top rung proposes near 0.8."""
    from drsearch.config.study import PrunerConfig

    study = optuna.create_study(direction="maximize")
    rng = random.Random(0)
    for _ in range(40):
        x = rng.random()
        _trial_at(study, x, {1: 1 - abs(x - 0.1)}, "pruned")
    for _ in range(12):
        x = rng.random()
        _trial_at(study, x, {1: 1 - abs(x - 0.1), 2: 0.5, 4: 1 - abs(x - 0.8)}, "pruned")
    config = SimpleNamespace(
        sampler=SamplerConfig(name="tpe", seed=0, n_startup_trials=5, fit_on="top_rung"),
        pruner=PrunerConfig(grace_period=1, reduction_factor=2),
    )
    study.sampler = make_sampler(config)  # type: ignore[arg-type]
    proposed = []
    for _ in range(10):
        trial = study.ask()
        proposed.append(trial.suggest_float("x", 0, 1))
        study.tell(trial, state=optuna.trial.TrialState.FAIL)
    assert abs(sorted(proposed)[5] - 0.8) < 0.15, proposed


def test_fit_on_top_rung_is_refused_in_one_line_without_tpe(
    tmp_path: Path, tiny_dataset: Path
) -> None:
    from click.testing import CliRunner

    from drsearch.cli import cli
    from tests.conftest import write_tiny_study

    path = write_tiny_study(
        tmp_path,
        tiny_dataset,
        "optim.lr: {type: float, low: 1.0e-3, high: 1.0e-1, log: true}\n",
        sampler={"name": "random", "fit_on": "top_rung"},
    )
    checked = CliRunner().invoke(cli, ["check", str(path)])
    assert checked.exit_code == 2
    line = next(x for x in checked.output.splitlines() if "sampler.fit_on" in x)
    assert str(path) in line and "set sampler.name: tpe" in line


def test_top_rung_counts_an_early_stopped_trial_at_its_last_value_without_constraints() -> None:
    from drsearch.search.samplers import _AtTopRung

    study = optuna.create_study(direction="maximize")
    for i in range(2):  # ran all 4 epochs
        _trial_at(study, 0.1 * i, {1: 0.2, 2: 0.3, 4: (0.4, 0.41)[i]}, "complete")
    # early stopping after epoch 2; infeasible at its end
    _trial_at(study, 0.9, {1: 0.5, 2: 0.9}, "complete", constraints=[0.5])
    _trial_at(study, 0.5, {1: 0.1}, "pruned")
    seen = _AtTopRung(study, [1, 2], n_startup=3)._get_trials(states=(TrialState.COMPLETE,))
    # level 4 (the last epoch a complete trial trained) has 3: the stopped one at 0.9
    assert sorted((t.params["x"], t.value) for t in seen) == [(0.0, 0.4), (0.1, 0.41), (0.9, 0.9)]
    assert all(t.constraints == {} for t in seen)  # ranked by value, not set below as infeasible
    assert study.trials[2].system_attrs["constraints"] == [0.5]  # stored as it was
