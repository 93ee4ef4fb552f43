"""Search-space files: a table of input -> distribution, and one-line errors for bad input."""

from __future__ import annotations

from pathlib import Path

import optuna
import pytest
from optuna.distributions import (
    CategoricalDistribution,
    FloatDistribution,
    IntDistribution,
)

from drsearch.config import Recipe, load_recipe, parse_config
from drsearch.config.space import apply_params, load_search_space, sample, trial_recipe
from drsearch.errors import ConfigError
from drsearch.io import flatten
from tests.conftest import USUAL_KNOBS

ROOT = Path(__file__).resolve().parents[1]
BASE = parse_config(
    Recipe,
    {
        "loss": {"class_weights": [1, 1, 1, 1, 1]},
        "data": {"progressive": [{"epoch": 0, "size": 64}, {"epoch": 2, "size": 96}]},
        "model": {"lora": {"r": 4}},
    },
    "test",
)


def space_file(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "space.yaml"
    path.write_text(text)
    return path


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            "optim.lr: {type: float, low: 1e-5, high: 1e-3, log: true}",
            FloatDistribution(1e-5, 1e-3, log=True),
        ),
        (
            "schedule.warmup_epochs: {type: float, low: 0, high: 5, step: 0.5}",
            FloatDistribution(0, 5, step=0.5),
        ),
        ("schedule.t0: {type: int, low: 1, high: 6}", IntDistribution(1, 6)),
        (
            "train.batch_size: {type: int, low: 16, high: 64, step: 16}",
            IntDistribution(16, 64, step=16),
        ),
        (
            "schedule.name: {type: categorical, choices: [none, cosine, cosine_restarts]}",
            CategoricalDistribution(["none", "cosine", "cosine_restarts"]),
        ),
        ("loss.class_weights.3: {type: float, low: 1, high: 8}", FloatDistribution(1, 8)),
        ("data.progressive.1.epoch: {type: int, low: 1, high: 4}", IntDistribution(1, 4)),
    ],
)
def test_parses_to_optuna_distribution(tmp_path: Path, text: str, expected: object) -> None:
    import optuna

    space = load_search_space(space_file(tmp_path, text), BASE)
    trial = optuna.create_study().ask()
    sample(trial, space, BASE)
    assert list(trial.distributions.values()) == [expected]  # what Optuna was asked for


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            "optim.lrr: {type: float, low: 0.1, high: 1}",
            "optim.lrr: not a recipe key (the part 'lrr' does not exist)",
        ),
        ("optimizer.lr: {type: float, low: 0.1, high: 1}", "not a recipe key"),
        (
            "optim.lr: {type: float, low: 0.1, high: 0.01}",
            "optim.lr: empty range: low (0.1) must be < high (0.01)",
        ),
        ("optim.lr: {type: float, low: 0, high: 0.1, log: true}", "a log range needs low > 0"),
        (
            "optim.lr: {type: float, low: -1, high: 0.1}",
            "optim.lr: -1.0 is not a valid value for this key",
        ),
        (
            "loss.name: {type: categorical, choices: [ce, dice]}",
            "loss.name: 'dice' is not a valid value for this key",
        ),
        ("train.epochs: {type: int, low: 0, high: 3}", "train.epochs: 0 is not a valid value"),
        ("optim.lr: {type: uniform, low: 0.1, high: 1}", "optim.lr: "),
        ("loss.class_weights.5: {type: float, low: 1, high: 2}", "not a recipe key"),
        (
            "loss.gamma: {type: float, low: 1, high: 2, when: {loss.nam: focal}}",
            "loss.gamma: when loss.nam: not a recipe key",
        ),
        ("{}", "the search space is empty"),
        (
            "data.progressive.2.epoch: {type: int, low: 3, high: 4}",
            "data.progressive.2.epoch: the recipe's data.progressive has 2 entries, so there is "
            "no data.progressive.2; add it to the recipe",
        ),
        (
            "model.lora.target_modules: {type: categorical, choices: [qkv, everything]}",
            "model.lora.target_modules: 'everything' is not a valid value",
        ),
        ("optim.lr: {type: float, low: .nan, high: 0.1}", "low: Input should be a finite number"),
        ("optim.lr: {type: float, low: 0.1, high: .inf}", "high: Input should be a finite"),
        (
            "data.sources.0.use: {type: categorical, choices: [train, val]}",
            "data.sources.0.use: may not be searched",
        ),
        ("pinned.seed: {type: int, low: 1, high: 3}", "the recipe has no pinned; set"),
        (
            "optim.lr: {type: float, low: 0.1, high: 0.2, when: {loss.gamma: {a: 1}}}",
            "optim.lr: when.loss.gamma",
        ),
        ("optim.lr: {type: float, low: 0.1, high: 0.2, when: 3}", "optim.lr: when: Input should"),
        ("optim.lr: {type: float, low: 0.1, high: 0.2}\noptim.lr: {type: int}", "appears twice"),
    ],
)
def test_bad_space_gives_one_line_naming_file_and_key(
    tmp_path: Path, text: str, message: str
) -> None:
    path = space_file(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_search_space(path, BASE)
    assert str(info.value).startswith(f"{path}: ")
    assert message in str(info.value)
    assert "\n" not in str(info.value)


def test_a_condition_on_a_key_the_base_recipe_lacks_samples_without_crashing(
    tmp_path: Path,
) -> None:
    """``when`` on a list element the base recipe holds as a preset name: never active."""
    import optuna

    base = parse_config(Recipe, {"loss": {"class_weights": "inverse"}}, "test")
    path = space_file(
        tmp_path, "optim.lr: {type: float, low: 0.1, high: 0.2, when: {loss.class_weights.3: 2}}"
    )
    space = load_search_space(path, base)
    trial = optuna.create_study().ask()
    assert sample(trial, space, base) == {}


def test_class_weight_index_needs_an_explicit_list(tmp_path: Path) -> None:
    base = parse_config(Recipe, {"loss": {"class_weights": "inverse"}}, "test")
    path = space_file(tmp_path, "loss.class_weights.4: {type: float, low: 1, high: 6}")
    with pytest.raises(ConfigError, match="preset 'inverse'; set it to a list of 5 weights"):
        load_search_space(path, base)


def test_conditional_parameters_are_sampled_only_when_active(tmp_path: Path) -> None:
    path = space_file(
        tmp_path,
        """
schedule.name: {type: categorical, choices: [cosine, cosine_restarts]}
schedule.t0: {type: int, low: 1, high: 3, when: {schedule.name: cosine_restarts}}
loss.gamma: {type: float, low: 1, high: 2, when: {loss.name: focal}}
""",
    )
    space = load_search_space(path, BASE)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    seen = []
    for _ in range(20):
        trial = study.ask()
        params = sample(trial, space, BASE)
        seen.append(params)
        assert ("schedule.t0" in params) == (params["schedule.name"] == "cosine_restarts")
        assert "loss.gamma" not in params  # the base recipe's loss is ce
        study.tell(trial, 0.0)
    assert {p["schedule.name"] for p in seen} == {"cosine", "cosine_restarts"}


def test_params_become_a_valid_recipe() -> None:
    params = {
        "optim.lr": 3e-4,
        "loss.class_weights.3": 4.0,
        "loss.class_weights.4": 6.0,
        "schedule.name": "step",
    }
    recipe = trial_recipe(BASE, params, "trial 0")
    assert recipe.optim.lr == 3e-4 and recipe.schedule.name == "step"
    assert recipe.loss.class_weights == [1, 1, 1, 4.0, 6.0]
    none_base = parse_config(Recipe, {}, "test")  # class_weights "none" -> ones, then set
    assert apply_params(none_base, {"loss.class_weights.3": 2.0})["loss"]["class_weights"] == [
        1.0,
        1.0,
        1.0,
        2.0,
        1.0,
    ]
    with pytest.raises(ConfigError, match="trial 1: schedule.warmup_epochs: warmup must end"):
        trial_recipe(BASE, {"schedule.warmup_epochs": 50}, "trial 1")


def test_shipped_spaces_load_against_their_recipes() -> None:
    base = load_recipe(ROOT / "recipes" / "demo.yaml", {"loss.class_weights": [1, 1, 1, 1, 1]})
    space = load_search_space(ROOT / "search_spaces" / "demo.yaml", base)
    assert set(space) >= USUAL_KNOBS


@pytest.mark.parametrize("name", ["tpe", "random", "gp", "cmaes"])
def test_every_sampler_explores_the_demo_space(name: str, tmp_path: Path) -> None:
    from drsearch.config.study import StudyConfig
    from drsearch.search.samplers import make_sampler

    base = load_recipe(ROOT / "recipes" / "demo.yaml", {"loss.class_weights": [1, 1, 1, 1, 1]})
    space = load_search_space(ROOT / "search_spaces" / "demo.yaml", base)
    cfg = StudyConfig(
        name="s",
        recipe=Path("r"),
        search_space=Path("s"),
        sampler={"name": name, "seed": 1, "n_startup_trials": 2},
    )
    study = optuna.create_study(direction="maximize", sampler=make_sampler(cfg))
    for _ in range(4):
        trial = study.ask()
        params = sample(trial, space, base)
        applied = flatten(trial_recipe(base, params, "t").model_dump(mode="json"))
        assert {key: applied[key] for key in params} == params  # every draw lands in the recipe
        study.tell(trial, params["optim.lr"])
    assert len({t.params["optim.lr"] for t in study.trials}) == 4


def test_searching_inside_a_section_the_recipe_lacks_is_an_error(tmp_path: Path) -> None:
    no_lora = parse_config(Recipe, {}, "test")
    path = space_file(tmp_path, "model.lora.r: {type: categorical, choices: [4, 8]}")
    with pytest.raises(ConfigError, match=r"model.lora.r: the recipe has no model.lora; set"):
        load_search_space(path, no_lora)
    assert set(load_search_space(path, BASE)) == {"model.lora.r"}
