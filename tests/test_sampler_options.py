"""TPE's options and a share of random trials (``sampler.random_fraction``)."""

from __future__ import annotations

import random
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import optuna
import pytest
from optuna.trial import TrialState

from drsearch.config.study import PrunerConfig, SamplerConfig
from drsearch.search.samplers import TrialSeededSampler, make_sampler, trial_seed


def test_a_random_fraction_draws_that_share_of_trials_at_random_fixed_by_each_trials_seed() -> None:
    config = SimpleNamespace(
        name="s",
        sampler=SamplerConfig(name="tpe", seed=7, n_startup_trials=0, random_fraction=0.3),
        pruner=PrunerConfig(),
    )
    sampler = make_sampler(config)  # type: ignore[arg-type]
    assert isinstance(sampler, TrialSeededSampler)
    study = optuna.create_study(direction="maximize")
    kinds = []
    for number in range(400):
        trial = SimpleNamespace(number=number)
        sampler.before_trial(study, trial)  # type: ignore[arg-type]
        kinds.append(type(sampler._inner).__name__)
        expected = random.Random(trial_seed(7, number, "s")).random() < 0.3
        assert (kinds[-1] == "RandomSampler") == expected
    share = kinds.count("RandomSampler") / len(kinds)
    assert 0.24 < share < 0.36  # binomial(400, 0.3): 0.3 +- 3 standard deviations
    assert set(kinds) == {"RandomSampler", "TPESampler"}
    # a random sampler is never mixed in by default
    tpe = SimpleNamespace(
        name="s", sampler=SamplerConfig(name="tpe", seed=7), pruner=PrunerConfig()
    )
    plain = make_sampler(tpe)  # type: ignore[arg-type]
    for number in range(50):
        plain.before_trial(study, SimpleNamespace(number=number))  # type: ignore[arg-type]
        assert type(plain._inner).__name__ == "TPESampler"


def test_tpes_options_reach_the_sampler_and_the_default_is_tpe_on_the_top_rung() -> None:
    # bench/hpo_lcbench.py's evidence (issue 24); fit_on unset follows the sampler
    assert (SamplerConfig().name, SamplerConfig().fit_on) == ("tpe", "top_rung")
    assert SamplerConfig(name="tpe").fit_on == "top_rung"
    assert SamplerConfig(name="tpe", fit_on="outcomes").fit_on == "outcomes"
    assert SamplerConfig(name="random").fit_on == SamplerConfig(name="gp").fit_on == "outcomes"
    study = optuna.create_study(direction="maximize")
    for multivariate, liar in ((True, True), (False, False)):
        config = SimpleNamespace(
            name="s",
            sampler=SamplerConfig(name="tpe", multivariate=multivariate, constant_liar=liar),
            pruner=PrunerConfig(),
        )
        sampler = make_sampler(config)  # type: ignore[arg-type]
        sampler.before_trial(study, SimpleNamespace(number=0))  # type: ignore[arg-type]
        tpe = sampler._inner
        assert isinstance(tpe, optuna.samplers.TPESampler)
        assert (tpe._multivariate, tpe._group, tpe._constant_liar) == (
            multivariate, multivariate, liar
        )  # fmt: skip


def _trial_at(
    study: optuna.Study, x: float, curve: dict[int, float], state: str, constraints: Any = None,
    ranked: dict[int, float] | None = None,
) -> None:  # fmt: skip
    """A trial of ``x`` with ``curve`` (epoch -> value), pruned, complete or still running;
    ``ranked``: the study's objective at some epochs, where it differs from the curve."""
    from drsearch.search.trial import RANKED_ATTR

    trial = study.ask()
    for epoch, value in (ranked or {}).items():
        study._storage.set_trial_system_attr(trial._trial_id, f"{RANKED_ATTR}{epoch}", value)
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
        name="s",
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


def test_top_rung_fits_what_the_study_ranks_not_the_pruning_metric() -> None:
    """A DR study prunes on accuracy but ranks on accuracy minus the constraints' penalty:
    a trial accurate at rung 2 that misses PDR ranks low there, in the model too. A trial
    recorded without the objective (a continued study) puts every trial on the pruning
    value: one scale."""
    from drsearch.search.samplers import _AtTopRung

    study = optuna.create_study(direction="maximize")
    _trial_at(study, 0.1, {1: 0.5, 2: 0.9}, "pruned", ranked={1: 0.1, 2: 0.2})  # infeasible
    _trial_at(study, 0.2, {1: 0.5, 2: 0.8}, "pruned", ranked={1: 0.5, 2: 0.8})  # feasible
    _trial_at(study, 0.3, {1: 0.5, 2: 0.7, 4: 0.8}, "complete", ranked={2: 0.7, 4: 0.75})
    # early stopping after epoch 3, infeasible there
    _trial_at(study, 0.4, {1: 0.6, 2: 0.7, 3: 0.7}, "complete", ranked={2: 0.7, 3: 0.1})
    seen = _AtTopRung(study, [1, 2], n_startup=2)._get_trials(states=(TrialState.COMPLETE,))
    # level 4 (the last epoch a complete trial trained) has 2: the early-stopped one at its last
    assert sorted((t.params["x"], t.value) for t in seen) == [(0.3, 0.75), (0.4, 0.1)]
    seen = _AtTopRung(study, [1, 2], n_startup=4)._get_trials(states=(TrialState.COMPLETE,))
    assert sorted((t.params["x"], t.value) for t in seen) == [
        (0.1, 0.2), (0.2, 0.8), (0.3, 0.7), (0.4, 0.7),
    ]  # fmt: skip
    _trial_at(study, 0.5, {1: 0.4, 2: 0.6}, "pruned")  # recorded before the objective was
    seen = _AtTopRung(study, [1, 2], n_startup=4)._get_trials(states=(TrialState.COMPLETE,))
    assert sorted((t.params["x"], t.value) for t in seen) == [
        (0.1, 0.9), (0.2, 0.8), (0.3, 0.7), (0.4, 0.7), (0.5, 0.6),
    ]  # fmt: skip


def test_the_methods_paragraph_names_the_samplers_the_trials_drew_from() -> None:
    from drsearch.inspect.methods import _search

    study = {
        "counts": {"complete": 1, "pruned": 2, "failed": 0}, "space": ["optim.lr"],
        "pruner": {"enabled": True, "mode": "promotion", "metric": "accuracy",
                   "grace_period": 1, "reduction_factor": 2},
        "sampler": "TPE (fitted on the top rung, as BOHB)", "sampler_seed": 0, "n_trials": 3,
        "max_epochs": 8, "samplers": ["random", "TPE (fitted on the top rung, as BOHB)"],
    }  # fmt: skip
    assert (
        "searched with Optuna (random sampler, then TPE (fitted on the top rung, as BOHB) "
        "sampler; seed 0) over 1 parameters" in _search(study)
    )
    unrecorded = _search(study | {"samplers": None})
    assert "(its file names the TPE (fitted on the top rung, as BOHB) sampler; the study " in (
        unrecorded
    )


def test_a_dr_study_with_the_default_sampler_stores_what_it_ranks_at_every_epoch(
    tmp_path: Path, tiny_dataset: Path
) -> None:
    """A real (tiny) DR study on the default sampler, TPE fitted on the top rung, under
    promotion ASHA with a severe-grade constraint: the objective is stored with every epoch
    (penalties make it differ from the pruning value), and a complete trial's stored
    objective at its last epoch is its value (one rule for both)."""
    from click.testing import CliRunner

    from drsearch.cli import cli
    from drsearch.search.trial import RANKED_ATTR
    from tests.conftest import write_tiny_study
    from tests.test_study_robustness import study_trials

    path = write_tiny_study(
        tmp_path, tiny_dataset, "optim.lr: {type: float, low: 1.0e-3, high: 1.0e-1, log: true}\n",
        sampler={"seed": 0, "n_startup_trials": 2}, budget={"n_trials": 5},
        pruner={"mode": "promotion", "grace_period": 1, "reduction_factor": 2},
        recipe_overrides={"train.epochs": 3},
    )  # fmt: skip
    result = CliRunner().invoke(cli, ["run", str(path), "--quiet"])
    assert result.exit_code == 0, result.output
    trials = study_trials(path)
    assert len(trials) == 5
    differ = 0
    for t in trials:
        for epoch, value in t.intermediate_values.items():
            differ += t.system_attrs[f"{RANKED_ATTR}{epoch}"] != value
        if t.state == TrialState.COMPLETE:
            last = max(t.intermediate_values)
            assert t.system_attrs[f"{RANKED_ATTR}{last}"] == pytest.approx(t.value)
    # the tiny models miss the PDR constraint (or the trivial model) somewhere: penalties
    assert differ > 0


def test_a_study_records_the_samplers_its_trials_drew_from_and_says_when_one_changes() -> None:
    from drsearch.config.study import StudyConfig
    from drsearch.search.runners.simulated import memory_store
    from drsearch.search.store import SAMPLERS_ATTR, StudyStore

    base = {"name": "s", "recipe": "r.yaml", "search_space": "s.yaml"}
    store = memory_store(StudyConfig.model_validate(base))
    assert store.note_sampler() is None  # a new study: nothing to say
    assert store.note_sampler() is None  # the same sampler again
    attrs = lambda: store.storage.get_study_system_attrs(store.study._study_id)  # noqa: E731
    assert attrs()[SAMPLERS_ATTR] == ["TPE (fitted on the top rung, as BOHB)"]
    other = StudyStore.__new__(StudyStore)  # the same study, its file now naming random
    other.__dict__ |= store.__dict__ | {
        "config": StudyConfig.model_validate(base | {"sampler": {"name": "random"}})
    }
    said = other.note_sampler()
    assert said == (
        "the next trials draw from the random sampler; the earlier ones from TPE (fitted on "
        "the top rung, as BOHB)"
    )
    assert attrs()[SAMPLERS_ATTR] == ["TPE (fitted on the top rung, as BOHB)", "random"]
    old = memory_store(StudyConfig.model_validate(base))  # begun before samplers were recorded
    old.study.ask()
    assert "earlier trials' sampler is not recorded" in (old.note_sampler() or "")
