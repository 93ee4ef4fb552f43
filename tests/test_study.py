"""Study files: the shipped ones validate; bad ones give one line naming file and key."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from drsearch.config.study import load_study
from drsearch.errors import ConfigError
from tests.conftest import USUAL_KNOBS, sampled_recipes, write_tiny_study

ROOT = Path(__file__).resolve().parents[1]


#: The studies the project ships (named, not globbed: a study a user copies into studies/, as
#: the README suggests, is theirs, not the project's, and must not break these tests).
SHIPPED = ["demo", "effb2", "fixres_progressive", "medsiglip_lora"]


def test_the_four_studies_ship() -> None:
    """Each named study is there, and every study file the repository tracks is named here
    (so a study added to the project is tested); untracked files are the user's."""
    import subprocess

    assert all((ROOT / "studies" / f"{name}.yaml").is_file() for name in SHIPPED)
    tracked = subprocess.run(
        ["git", "ls-files", "studies/*.yaml"], cwd=ROOT, capture_output=True, text=True
    )
    if tracked.returncode != 0:  # not a git checkout (an unpacked release): nothing to compare
        pytest.skip("not a git checkout")
    assert sorted(Path(f).stem for f in tracked.stdout.split()) == SHIPPED


@pytest.mark.parametrize("name", SHIPPED)
def test_every_shipped_study_validates(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(ROOT)
    loaded = load_study(Path("studies") / f"{name}.yaml")
    assert loaded.config.name == name and loaded.space
    assert loaded.recipe.train.epochs >= loaded.config.pruner.grace_period
    assert loaded.warnings == []  # no rung inside a warmup or before a resize
    from drsearch.search.checks import sample_problems

    assert sample_problems(loaded, 60) == []  # e.g. no focal loss drawn for a regression head


@pytest.mark.parametrize("name", ["demo", "effb2"])
def test_classifier_studies_search_the_usual_knobs(
    name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(ROOT)
    loaded = load_study(Path("studies") / f"{name}.yaml")
    assert loaded.config.name == name
    assert loaded.config.executor == "ray"
    keys = set(loaded.space)
    for key in sorted(USUAL_KNOBS):
        assert key in keys, key
    assert loaded.recipe.train.epochs >= loaded.config.pruner.grace_period


def test_effb2_keeps_the_default_medical_constraints(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(ROOT)
    loaded = load_study(Path("studies/effb2.yaml"))
    from drsearch.clinical import DEFAULT_CONSTRAINTS

    objective = loaded.config.objective
    assert [(c.metric, c.min) for c in objective.constraints] == [
        (c.metric, c.min) for c in DEFAULT_CONSTRAINTS
    ]
    assert objective.constraints_on == "lower_bound" and objective.confidence == 0.90
    assert loaded.recipe.model.name == "efficientnet_b2"
    # a finalist stage on 5 folds, which the search validates on (fold 0), and a test set
    assert loaded.config.finalists.folds == 5 and loaded.config.finalists.top_k == 3
    assert (loaded.recipe.data.cv_folds, loaded.recipe.data.cv_fold) == (5, 0)
    assert loaded.recipe.data.test_fraction == 0.15


def study_file(tmp_path: Path, **changes: object) -> Path:
    (tmp_path / "space.yaml").write_text("optim.lr: {type: float, low: 1.0e-4, high: 1.0e-2}\n")
    (tmp_path / "recipe.yaml").write_text("train: {epochs: 4}\n")
    data = {
        "name": "s",
        "recipe": str(tmp_path / "recipe.yaml"),
        "search_space": str(tmp_path / "space.yaml"),
    }
    data.update(changes)
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        (
            {"pruner": {"grace_period": 12}},
            "pruner.grace_period must be <= train.epochs, but got 12 > 4",
        ),
        ({"pruner": {"max_epochs": 9}}, "pruner.max_epochs must be <= train.epochs"),
        ({"budget": {"n_trails": 3}}, "budget.n_trails: unknown key; did you mean 'n_trials'?"),
        ({"objective": {"metric": "auc"}}, "objective.metric: must be one of"),
        (
            {"objective": {"constraints": [{"metric": "sensitivity_pdr", "min": 1.5}]}},
            "objective.constraints.0.min: must be <= 1",
        ),
        ({"sampler": {"name": "bayes"}}, "sampler.name: must be one of"),
        ({"storage": "not a url"}, "storage: not an SQLAlchemy URL"),
        ({"name": "has space"}, "name: must be 1-64 letters, digits, '_', '-' or '.'"),
        ({"name": ".."}, "starting with a letter or digit (it names the study's folders"),
        ({"name": "a/../../b"}, "got 'a/../../b'"),
        ({"name": "/etc"}, "got '/etc'"),
        ({"name": "a\x00b"}, "name: must be 1-64"),
        ({"name": ""}, "name: must be 1-64"),
        ({"name": "x" * 65}, "name: must be 1-64"),
        ({"storage": "mysql://u@h/db"}, "storage: mysql is not supported; use SQLite"),
        ({"storage": "postgresql+nodriver://u@h/db"}, "storage: unknown database driver"),
        ({"sampler": {"seed": -3}}, "sampler.seed: must be >= 0, got -3"),
        (
            {"budget": {"time_limit_s": float("inf")}},
            "budget.time_limit_s: Input should be a finite",
        ),
        ({"overrides": {"optim.lr": -1}}, "overrides: optim.lr=-1: must be > 0.0"),
        ({"overrides": {"optim.lrr": 1}}, "overrides: optim.lrr: not a recipe key"),
    ],
)
def test_bad_study_gives_one_line(tmp_path: Path, changes: dict, message: str) -> None:
    path = study_file(tmp_path, **changes)
    with pytest.raises(ConfigError) as info:
        load_study(path)
    assert message in str(info.value)
    assert "\n" not in str(info.value)


def test_cli_overrides_apply(tmp_path: Path) -> None:
    loaded = load_study(
        study_file(tmp_path),
        {
            "budget.n_trials": 7,
            "executor": "local",
            "resources.max_concurrent": 3,
            "name": "other",
            "storage": None,
        },
    )
    cfg = loaded.config
    assert (cfg.budget.n_trials, cfg.executor, cfg.resources.max_concurrent, cfg.name) == (
        7,
        "local",
        3,
        "other",
    )


def test_fixres_progressive_study_searches_phase_boundaries(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.chdir(ROOT)
    loaded = load_study(Path("studies/fixres_progressive.yaml"))
    assert {"data.progressive.1.epoch", "data.progressive.2.epoch"} <= set(loaded.space)
    assert loaded.recipe.train.ema and loaded.recipe.model.drop_path_rate > 0
    for recipe in sampled_recipes(loaded.recipe, loaded.space, 10):  # each a valid recipe
        epochs = [p.epoch for p in recipe.data.progressive]
        assert epochs[0] == 0 < epochs[1] < epochs[2] < recipe.train.epochs
        assert [p.size for p in recipe.data.progressive] == [160, 224, 256]


def test_medsiglip_lora_study_is_the_one_users_describe(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(ROOT)
    loaded = load_study(Path("studies/medsiglip_lora.yaml"))
    recipe, space = loaded.recipe, loaded.space
    assert "siglip" in recipe.model.name and recipe.data.image_size == 448
    assert recipe.model.lora is not None and str(recipe.model.pretrained).endswith(".safetensors")
    assert (recipe.train.batch_size, recipe.train.grad_accum) == (6, 4)
    assert recipe.train.patience is not None and recipe.train.patience >= 8
    bounds = {k: (getattr(p, "low", None), getattr(p, "high", None)) for k, p in space.items()}
    assert bounds["loss.gamma"][1] == 6.0  # alpha: per grade, not a scale Adam cancels
    assert space["loss.alpha"].choices == [1.0, "inverse_sqrt", "inverse"]
    assert bounds["loss.class_weights.3"][1] == 8.0 and bounds["loss.class_weights.4"][1] == 6.0
    assert {"model.lora.r", "model.lora.alpha", "model.lora.dropout"} <= set(space)
    assert set(space["model.lora.target_modules"].choices) == {"qkv", "attention", "attention_mlp"}
    assert len(sampled_recipes(recipe, space, 10)) == 10  # each a valid recipe


def test_every_metric_a_study_may_name_is_computed_and_reported() -> None:
    import numpy as np

    from drsearch.config.study import CONSTRAINT_METRICS, PRIMARY_METRICS
    from drsearch.search.worker import REPORTED_METRICS
    from drsearch.train.metrics import compute_metrics

    labels = np.array([0, 0, 1, 2, 3, 4, 4, 2])
    probs = np.eye(5)[[0, 1, 1, 2, 3, 4, 3, 2]] * 0.9 + 0.02
    metrics = compute_metrics(labels, probs)
    named = set(CONSTRAINT_METRICS) | set(PRIMARY_METRICS)
    assert named <= set(REPORTED_METRICS)
    assert all(metrics[m] is not None for m in named), [m for m in named if metrics[m] is None]
    # the weakest grade: grade 4 found once of twice (grade 1 once of once)
    assert metrics["min_sensitivity"] == 0.5


def test_a_constraint_the_validation_split_cannot_compute_is_refused(tmp_path: Path) -> None:
    from drsearch.data.synth import write_synthetic_dataset
    from drsearch.search.checks import check_inputs

    root = write_synthetic_dataset(tmp_path / "data", n=40, size=32, seed=0, imbalance="balanced")
    table = root / "train.csv"
    rows = table.read_text().splitlines()
    table.write_text("\n".join([rows[0]] + [r for r in rows[1:] if not r.endswith(",4")]) + "\n")
    path = write_tiny_study(tmp_path, root, "optim.lr: {type: float, low: 1.0e-4, high: 1.0e-2}\n")
    loaded = load_study(path)  # the default constraint: sensitivity_pdr >= 0.5
    with pytest.raises(ConfigError, match=r"objective.constraints.0: sensitivity_pdr is undefined"):
        check_inputs(loaded)
    fine = write_tiny_study(
        tmp_path,
        root,
        "optim.lr: {type: float, low: 1.0e-4, high: 1.0e-2}\n",
        name="fine",
        objective={
            "metric": "accuracy",
            "constraints": [{"metric": "min_sensitivity", "min": 0.2}],
        },
    )
    check_inputs(load_study(fine))  # min_sensitivity is over the grades present


def test_a_study_pins_its_objective_into_every_trial_recipe(tmp_path: Path) -> None:
    from drsearch.search.worker import epoch_report

    path = write_tiny_study(
        tmp_path,
        tmp_path / "data",
        "optim.lr: {type: float, low: 1.0e-4, high: 1.0e-2}\n",
        recipe_overrides={"train.monitor": "qwk"},
        pruner={"metric": "objective", "grace_period": 2, "reduction_factor": 2},
    )
    loaded = load_study(path)
    assert loaded.recipe.train.monitor == "objective"  # the study's rule, not the recipe's
    assert loaded.recipe.train.objective == loaded.config.objective
    (recipe,) = sampled_recipes(loaded.recipe, loaded.space, 1)
    assert recipe.train.objective == loaded.config.objective
    record = {"epoch": 2, "best_epoch": 1, "lr": {}, "train": {"loss": 1.0},
              "val": {"accuracy": 0.8, "objective": -0.4}}  # fmt: skip
    assert epoch_report(record, "objective").value == -0.4  # pruning on the objective
    assert loaded.warnings == []  # rungs at 2 (and 4 > 3 epochs: none), after the 1-epoch warmup


def test_rungs_inside_the_warmup_or_before_a_resize_are_warned_at_load(tmp_path: Path) -> None:
    path = write_tiny_study(
        tmp_path,
        tmp_path / "data",
        "schedule.warmup_epochs: {type: float, low: 0.0, high: 2.0}\n",
        recipe_overrides={
            "train.epochs": 8,
            "data.progressive": [{"epoch": 0, "size": 32}, {"epoch": 4, "size": 48}],
        },
        pruner={"grace_period": 1, "reduction_factor": 2},
    )
    warmup, resize = load_study(path).warnings
    assert "pruner rungs at epoch(s) [1, 2] fall inside the LR warmup (up to 2 epochs)" in warmup
    assert "rungs at epoch(s) [1, 2, 4] come before the first resolution change (epoch 5" in resize


def test_pruner_max_epochs_plans_every_trial_and_the_exported_recipe(
    tmp_path: Path, tiny_dataset: Path
) -> None:
    from drsearch.config.space import sample, trial_recipe

    path = write_tiny_study(
        tmp_path,
        tiny_dataset,
        "optim.lr: {type: float, low: 1.0e-3, high: 1.0e-2}\n",
        pruner={"grace_period": 1, "max_epochs": 4},
        recipe_overrides={"train.epochs": 8},
    )
    loaded = load_study(path)
    assert loaded.recipe.train.epochs == loaded.max_epochs == 4
    assert any("pruner.max_epochs 4 < train.epochs 8: every trial trains 4 epochs" in w
               for w in loaded.warnings)  # fmt: skip
    import optuna

    trial = optuna.create_study().ask()
    recipe = trial_recipe(loaded.recipe, sample(trial, loaded.space, loaded.recipe), "t")
    assert recipe.train.epochs == 4  # what config.yaml, and so `export`, records
