"""Recipe validation: good files load, bad ones give one line naming file, key and rule."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from drsearch.cli import cli
from drsearch.config import load_recipe, recipe_to_yaml
from drsearch.errors import ConfigError

ROOT = Path(__file__).resolve().parents[1]


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "recipe.yaml"
    path.write_text(text)
    return path


@pytest.mark.parametrize(
    "name", ["demo", "demo_lite0", "effb2", "fixres_progressive", "medsiglip_lora"]
)
def test_every_shipped_recipe_validates(name: str) -> None:
    recipe = load_recipe(ROOT / "recipes" / f"{name}.yaml")
    assert recipe.pinned is None and recipe.model.name


def test_shipped_demo_recipe_validates() -> None:
    recipe = load_recipe(ROOT / "recipes" / "demo.yaml")
    assert recipe.model.name == "resnet10t"
    assert recipe.data.kind == "synthetic"


def test_scientific_notation_without_dot_is_a_float(tmp_path: Path) -> None:
    recipe = load_recipe(write(tmp_path, "optim: {lr: 1e-5}\nschedule: {min_lr: 1E-7}\n"))
    assert recipe.optim.lr == pytest.approx(1e-5)
    assert recipe.schedule.min_lr == pytest.approx(1e-7)


def test_resolved_recipe_round_trips(tmp_path: Path) -> None:
    recipe = load_recipe(write(tmp_path, "loss: {name: focal, gamma: 6, alpha: 4}\n"))
    again = load_recipe(write(tmp_path, recipe_to_yaml(recipe)))
    assert again == recipe


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("optim: {lr: -0.1}", "optim.lr: must be > 0"),
        ("optim: {lr: 0}", "optim.lr: must be > 0"),
        ("optim: {lrr: 0.1}", "optim.lrr: unknown key; did you mean 'lr'?"),
        ("optimizer: {lr: 0.1}", "optimizer: unknown key; did you mean 'optim'?"),
        (
            "train: {epochs: 5}\nschedule: {warmup_epochs: 5}",
            "schedule.warmup_epochs: warmup must end before training does",
        ),
        ("loss: {class_weights: [1, 2, 3]}", "loss.class_weights: needs 5 weights"),
        ("loss: {alpha: [1, 2]}", "loss.alpha: needs 5 weights"),
        ("loss: {alpha: balanced}", "loss.alpha: must be one of 'inverse' or 'inverse_sqrt'"),
        ("loss: {name: dice}", "loss.name: must be one of 'ce' or 'focal', got 'dice'"),
        ("train: {epochs: ten}", "train.epochs: Input should be a valid integer"),
        ("model: {pretrained: true}", "model.pretrained: true would download"),
        ("schedule: {name: cosine, min_lr: 0.5}\noptim: {lr: 0.1}", "schedule.min_lr: must be <"),
        (
            "schedule: {name: cosine_restarts, min_lr: 0.1}\noptim: {lr: 0.1}",
            "schedule.min_lr: must be < optim.lr (0.1) for a cosine_restarts decay",
        ),
        ("data: {progressive: [{epoch: 1, size: 64}]}", "data.progressive: the first phase"),
        (
            "train: {epochs: 4}\ndata: {progressive: [{epoch: 0, size: 32}, {epoch: 4, size: 64}]}",
            "data.progressive.1.epoch: phase starts after training ends",
        ),
        ("augment: {mixup_alpha: 0.2}\ntrain: {batch_size: 15}", "train.batch_size: MixUp/CutMix"),
        ("data: {kind: csv}", "data.csv: data.kind 'csv' needs the label file"),
        ("- just\n- a list", "must be a mapping of sections"),
        ("optim: {lr: [0.1}", "not valid YAML (line 1"),
        (
            "model: {lora: {target_modules: everything}}",
            "model.lora.target_modules: must be one of 'qkv', 'attention' or 'attention_mlp', "
            "got 'everything'",
        ),
        ("model: {lora: {r: 0}}", "model.lora.r: must be >= 1, got 0"),
        ("model: {lora: {rank: 8}}", "model.lora.rank: unknown key; allowed keys: r, alpha"),
        ("optim: {lr: 0.1, lr: 0.2}", "not valid YAML (line 1, column 18): the key 'lr' appears"),
        ("train: {seed: -1}", "train.seed: must be >= 0, got -1"),
        ("data: {seed: 99999999999999}", "data.seed: must be <= 4294967295"),
        ("train: {epochs: 1e30}", "train.epochs:"),
        ("train: {threads: 100000}", "train.threads: must be <= 1024, got 100000"),
        (
            "loss: {class_weights: [1, 1, .nan, 1, 1]}",
            "loss.class_weights.2: Input should be a finite number",
        ),
        ("loss: {alpha: .inf}", "loss.alpha: Input should be a finite number"),
        ("name: x\nrecipe: r.yaml\nsearch_space: s.yaml", "this is a study file"),
        ("a:\n" + "".join(f"{'  ' * i}- \n" for i in range(1, 3000)), "nested more than 50"),
    ],
)
def test_bad_recipe_gives_one_line_naming_file_and_key(
    tmp_path: Path, text: str, expected: str
) -> None:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_recipe(path)
    message = str(info.value)
    assert message.startswith(f"{path}: ")
    assert expected in message
    assert "\n" not in message


def test_cli_bad_recipe_exits_2_with_one_line(tmp_path: Path) -> None:
    path = write(tmp_path, "optim: {lr: -1}\n")
    result = CliRunner().invoke(cli, ["train", str(path), "--out", str(tmp_path / "run")])
    assert result.exit_code == 2
    lines = result.output.strip().splitlines()
    assert lines == [f"Error: {path}: optim.lr: must be > 0.0, got -1"]
    assert "Traceback" not in result.output


def test_a_file_that_is_not_utf8_is_named(tmp_path: Path) -> None:
    path = tmp_path / "recipe.yaml"
    path.write_bytes("optim: {lr: 0.1}  # caf\u00e9\n".encode("latin-1"))
    with pytest.raises(ConfigError, match=r"recipe.yaml: not UTF-8 text \(byte 23\)"):
        load_recipe(path)


def test_overrides_are_blamed_for_their_own_mistakes(tmp_path: Path) -> None:
    runner = CliRunner()
    path = write(tmp_path, "train: {epochs: 3}\n")
    typo = runner.invoke(cli, ["lr", str(path), "--set", "optim.lrr=0.1"])
    assert typo.exit_code == 2
    assert typo.output.startswith("Error: --set optim.lrr: not a recipe key")
    value = runner.invoke(cli, ["lr", str(path), "--set", "optim.lr=-1"])
    assert value.output.strip() == "Error: --set optim.lr=-1: must be > 0.0, got -1"
    broken = runner.invoke(cli, ["lr", str(path), "--set", "k=[3"])
    assert broken.exit_code == 2 and "Error: --set k=[3: not valid YAML" in broken.output
    assert "Traceback" not in typo.output + value.output + broken.output


def test_cli_missing_file_and_bad_override(tmp_path: Path) -> None:
    runner = CliRunner()
    missing = runner.invoke(cli, ["lr", str(tmp_path / "nope.yaml")])
    assert missing.exit_code == 2
    assert "nope.yaml: file not found" in missing.output
    path = write(tmp_path, "train: {epochs: 3}\n")
    bad = runner.invoke(cli, ["lr", str(path), "--set", "optim.lr"])
    assert bad.exit_code == 2
    assert "--set expects KEY=VALUE" in bad.output
