"""drsearch diagnose on runs built to show each failure, and on a healthy one."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from drsearch.cli import cli
from drsearch.config import Recipe, parse_config, recipe_to_yaml
from drsearch.inspect.diagnose import diagnose
from drsearch.train import fit
from tests.conftest import make_recipe

AUG = ["HorizontalFlip", "Affine"]


def titles(run_dir: Path) -> dict[str, str]:
    return {f.title: f.severity for f in diagnose(run_dir)}


def fake_run(
    tmp_path: Path, epochs: list[dict], resumes: list[dict] | None = None, **recipe: object
) -> Path:
    """A run folder written by hand: config.yaml, metrics.jsonl, resumes.jsonl."""
    data = {
        "train": {"epochs": len(epochs)},
        "schedule": {"name": "none", "warmup_epochs": 0},
        "optim": {"lr": 1e-3},
    }
    for key, value in recipe.items():
        data[key] = value
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.yaml").write_text(recipe_to_yaml(parse_config(Recipe, data, "test")))
    lines = []
    for i, e in enumerate(epochs, start=1):
        lines.append(
            json.dumps(
                {
                    "epoch": i,
                    "image_size": e.get("size", 64),
                    "augmentations": e.get("aug", AUG),
                    "train": {"loss": e["tl"], "accuracy": e["ta"]},
                    "val": {
                        "accuracy": e["va"],
                        "loss": e["vl"],
                        "qwk": e["va"],
                        "sensitivity": e.get("sens", [0.95, 0.8, 0.85, 0.8, 0.9]),
                        "support": [60, 10, 20, 5, 5],
                    },
                    "lr": e.get("lr", {"backbone": 1e-3, "head": 1e-3}),
                    "lr_first": e.get("lr", {"backbone": 1e-3, "head": 1e-3}),
                    "best_epoch": e.get("best", i),
                }
            )
        )
    (run / "metrics.jsonl").write_text("\n".join(lines) + "\n")
    if resumes:
        (run / "resumes.jsonl").write_text("".join(json.dumps(r) + "\n" for r in resumes))
    return run


def healthy_epochs(n: int = 6) -> list[dict]:
    return [
        {"tl": 1.0 - 0.1 * i, "ta": 0.6 + 0.05 * i, "va": 0.58 + 0.05 * i, "vl": 1.0 - 0.1 * i}
        for i in range(n)
    ]


def test_healthy_run_says_so(tmp_path: Path) -> None:
    (finding,) = diagnose(fake_run(tmp_path, healthy_epochs()))
    assert finding.severity == "info" and finding.title == "healthy run"
    assert "6 epochs" in finding.evidence


def test_overfitting_and_its_start(tmp_path: Path) -> None:
    epochs = healthy_epochs(4) + [
        {"tl": 0.3, "ta": 0.93, "va": 0.70, "vl": 0.8},
        {"tl": 0.1, "ta": 0.97, "va": 0.68, "vl": 1.1},
        {"tl": 0.05, "ta": 0.99, "va": 0.66, "vl": 1.4},
    ]
    got = titles(fake_run(tmp_path, epochs))
    assert got["overfitting since epoch 4"] == "high"
    assert "plateau since epoch 4" in got


def test_resume_without_optimizer_state(tmp_path: Path) -> None:
    epochs = (
        healthy_epochs(3)
        + [{"tl": 1.4, "ta": 0.5, "va": 0.55, "vl": 1.3}]
        + [{"tl": 0.9, "ta": 0.65, "va": 0.66, "vl": 0.9}]
    )
    run = fake_run(tmp_path, epochs, resumes=[{"epoch": 3, "changed": {}}])
    (finding,) = [f for f in diagnose(run) if "resume" in f.title]
    assert finding.title == "regression right after the resume at epoch 3"
    assert "0.680 -> 0.550" in finding.evidence and "0.8000 -> 1.4000" in finding.evidence


def test_backbone_multiplier_changed_across_a_resume(tmp_path: Path) -> None:
    epochs = healthy_epochs(4)
    for e in epochs[:2]:
        e["lr"] = {"backbone": 1e-4, "head": 1e-3}  # multiplier 0.1 before the resume
    run = fake_run(tmp_path, epochs, resumes=[{"epoch": 2, "changed": {}}])
    (finding,) = [f for f in diagnose(run) if "multiplier" in f.title]
    assert finding.severity == "high"
    assert finding.title == "backbone LR multiplier changed at the resume at epoch 2"
    assert "0.1 before" in finding.evidence and "1 after" in finding.evidence
    (tmp_path / "b").mkdir()
    steady = fake_run(tmp_path / "b", healthy_epochs(4), resumes=[{"epoch": 2, "changed": {}}])
    assert not [f for f in diagnose(steady) if "multiplier" in f.title]


def test_augmentation_switched_off_in_a_phase(tmp_path: Path) -> None:
    epochs = healthy_epochs(4)
    epochs[2] |= {"aug": [], "size": 96}
    epochs[3] |= {"aug": [], "size": 96}
    got = {f.title: f for f in diagnose(fake_run(tmp_path, epochs))}
    finding = got["training augmentation switched off from epoch 3"]
    assert finding.severity == "high" and "(96 px) with none" in finding.evidence


def test_medical_gap(tmp_path: Path) -> None:
    epochs = healthy_epochs(4)
    epochs[-1]["sens"] = [0.99, 0.5, 0.8, 0.25, 0.9]
    got = titles(fake_run(tmp_path, epochs))
    assert got["severe NPDR sensitivity far below overall accuracy"] == "high"


def test_a_mild_grade_never_called_is_named_with_its_count(tmp_path: Path) -> None:
    epochs = healthy_epochs(4)
    epochs[-1]["sens"] = [0.99, 0.0, 0.8, 0.8, 0.9]  # support: 10 mild images
    (finding,) = [f for f in diagnose(fake_run(tmp_path, epochs)) if "mild" in f.title]
    assert finding.title == "mild sensitivity far below overall accuracy"
    assert finding.severity == "medium"  # not referable: below severe NPDR and PDR
    assert "sensitivity 0.000: 0/10 images (never called)" in finding.evidence


def test_a_validation_swing_the_checklist_fails_is_a_finding(tmp_path: Path) -> None:
    from drsearch.clinical import checklist

    epochs = healthy_epochs(5)
    epochs[-2]["va"], epochs[-1]["va"] = 0.65, 0.78  # 0.78 -> 0.65 -> 0.78: a 13-point swing
    epochs[-3]["va"] = 0.78
    run = fake_run(tmp_path, epochs)
    (finding,) = [f for f in diagnose(run) if "swings" in f.title]
    assert finding.title == "validation accuracy swings 13.0 points at the end of training"
    assert "down 13.0 points from epoch 3 to 4" in finding.evidence
    # the same judgement as the report's checklist
    log = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    (item,) = [c for c in checklist(log[-1]["val"], log, "validation") if "stable" in c.name]
    assert item.result == "fail" and item.threshold in finding.evidence
    # a steady climb of as many points is no swing
    (tmp_path / "c").mkdir()
    steady = diagnose(fake_run(tmp_path / "c", healthy_epochs(5)))
    assert not [f for f in steady if "swing" in f.title]


@pytest.mark.e2e
def test_lr_findings_on_real_runs(tmp_path: Path, tiny_dataset: Path) -> None:
    cases = {
        "warmup": make_recipe(tiny_dataset, schedule__warmup_epochs=2.9),
        "backbone": make_recipe(tiny_dataset, optim__backbone_lr_mult=0.1),
        "restarts": make_recipe(
            tiny_dataset,
            schedule__name="cosine_restarts",
            schedule__warmup_epochs=0,
            schedule__t0=1,
        ),
    }
    for name, recipe in cases.items():
        fit(recipe, run_dir=tmp_path / name)
    warm = titles(tmp_path / "warmup")
    assert warm["warmup takes most of the run"] == "high"
    assert warm["the configured LR is never reached"] == "high"
    assert titles(tmp_path / "backbone")["the backbone trains at 0.1x the head LR"] == "medium"
    restarts = {f.title: f for f in diagnose(tmp_path / "restarts")}
    finding = restarts["the LR jumps back up during training (warm restarts)"]
    assert "restarts at epoch(s) 2, 3" in finding.evidence


def test_cli_diagnose(tmp_path: Path) -> None:
    run = fake_run(tmp_path, healthy_epochs())
    result = CliRunner().invoke(cli, ["diagnose", str(run)])
    assert result.exit_code == 0 and "healthy run" in result.output
    bad = CliRunner().invoke(cli, ["diagnose", str(tmp_path / "nope")])
    assert bad.exit_code == 2 and "not a run folder" in bad.output
