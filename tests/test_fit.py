"""End-to-end training on tiny synthetic data: outputs, reporter seam, resume, failures."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import torch

from drsearch.config import load_recipe
from drsearch.errors import NonFiniteLossError
from drsearch.train import StopTraining, fit
from drsearch.train.loss import SoftTargetLoss
from drsearch.train.schedule import StepPlan, lr_factor
from tests.conftest import make_recipe

pytestmark = pytest.mark.e2e
ROOT = Path(__file__).resolve().parents[1]


def read_log(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_run_folder_contents_and_logged_lr_per_group(tmp_path: Path, tiny_dataset: Path) -> None:
    recipe = make_recipe(tiny_dataset, optim__backbone_lr_mult=0.1, optim__lr=1e-3)
    calls: list[tuple[int, float]] = []
    result = fit(
        recipe, lambda e, m: calls.append((e, m["val"]["accuracy"])), run_dir=tmp_path / "run"
    )
    run = tmp_path / "run"
    assert [e for e, _ in calls] == [1, 2, 3]
    assert result.epochs_completed == 3 and result.stopped == "completed"
    assert load_recipe(run / "config.yaml") == recipe
    info = json.loads((run / "run.json").read_text())
    assert info["n_train"] + info["n_val"] == 80 and info["n_val"] == 20
    log = read_log(run)
    spe = info["steps_per_epoch"]
    plan = StepPlan(spe, 3)
    for record in log:
        last_step = record["epoch"] * spe - 1
        factor = lr_factor(last_step, recipe.schedule, plan, 1e-3)
        assert record["lr"]["head"] == pytest.approx(1e-3 * factor)
        assert record["lr"]["backbone"] == pytest.approx(1e-4 * factor)
        assert record["lr_first"]["backbone"] == pytest.approx(
            1e-4 * lr_factor((record["epoch"] - 1) * spe, recipe.schedule, plan, 1e-3)
        )
        assert set(record["val"]) >= {
            "accuracy",
            "qwk",
            "sensitivity",
            "specificity",
            "confusion_matrix",
            "referable_auc",
            "loss",
        }
        assert record["train"]["images"] == spe * 16
    best = json.loads((run / "metrics.json").read_text())
    best_line = next(r for r in log if r["epoch"] == result.best_epoch)
    assert best["epoch"] == result.best_epoch
    assert best["qwk"] == best_line["val"]["qwk"]
    assert len(best["sensitivity"]) == 5 and len(best["confusion_matrix"]) == 5
    with (run / "predictions.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == 20 and list(rows[0]) == [
        "id",
        "label",
        "pred",
        "p0",
        "p1",
        "p2",
        "p3",
        "p4",
    ]
    accuracy = sum(r["label"] == r["pred"] for r in rows) / 20
    assert accuracy == pytest.approx(best["accuracy"])
    with (run / "split.csv").open() as fh:
        assert sum(1 for r in csv.DictReader(fh) if r["split"] == "val") == 20
    assert (run / "checkpoints" / "last.pt").is_file() and (
        run / "checkpoints" / "best.pt"
    ).is_file()


def test_reporter_can_stop_training_and_other_errors_propagate(
    tmp_path: Path, tiny_dataset: Path
) -> None:
    recipe = make_recipe(tiny_dataset)

    def stop_after_two(epoch: int, metrics: dict) -> None:
        if epoch == 2:
            raise StopTraining

    result = fit(recipe, stop_after_two, run_dir=tmp_path / "a")
    assert result.stopped == "reporter" and result.epochs_completed == 2
    assert len(read_log(tmp_path / "a")) == 2

    class Pruned(Exception):
        pass

    def prune(epoch: int, metrics: dict) -> None:
        raise Pruned

    with pytest.raises(Pruned):
        fit(recipe, prune, run_dir=tmp_path / "b")
    assert len(read_log(tmp_path / "b")) == 1


def test_resume_after_interruption_reproduces_uninterrupted_run(
    tmp_path: Path, tiny_dataset: Path
) -> None:
    recipe = make_recipe(
        tiny_dataset,
        train__epochs=4,
        train__ema=True,
        train__ema_decay=0.9,
        augment__mixup_alpha=0.4,
        augment__cutmix_alpha=1.0,
        augment__mix_prob=0.7,
        schedule__name="plateau",
        schedule__plateau_patience=0,
        train__monitor="loss",
    )
    full = fit(recipe, run_dir=tmp_path / "full")

    def crash(epoch: int, metrics: dict) -> None:
        if epoch == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        fit(recipe, crash, run_dir=tmp_path / "cut")
    resumed = fit(recipe, run_dir=tmp_path / "cut", resume=True)
    assert resumed.epochs_completed == 4
    strip = ("epoch_seconds", "train_seconds")
    a = [{k: v for k, v in r.items() if k not in strip} for r in read_log(tmp_path / "full")]
    b = [{k: v for k, v in r.items() if k not in strip} for r in read_log(tmp_path / "cut")]
    assert a == b
    assert resumed.best == full.best
    assert (tmp_path / "full" / "predictions.csv").read_text() == (
        tmp_path / "cut" / "predictions.csv"
    ).read_text()


def test_non_finite_loss_fails_with_a_reason(
    tmp_path: Path, tiny_dataset: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(SoftTargetLoss, "forward", lambda self, logits, t: logits.sum() * torch.nan)
    with pytest.raises(NonFiniteLossError, match="training loss became nan at epoch 1, batch 1"):
        fit(make_recipe(tiny_dataset), run_dir=tmp_path / "run")


def test_progressive_resizing_keeps_training_augmentation(
    tmp_path: Path, tiny_dataset: Path
) -> None:
    recipe = make_recipe(
        tiny_dataset,
        data__progressive=[{"epoch": 0, "size": 24}, {"epoch": 2, "size": 40}],
        data__image_size=40,
    )
    fit(recipe, run_dir=tmp_path / "run")
    log = read_log(tmp_path / "run")
    assert [r["image_size"] for r in log] == [24, 24, 40]
    assert all("Affine" in r["augmentations"] for r in log)


def test_early_stopping_on_patience(tmp_path: Path, tiny_dataset: Path) -> None:
    recipe = make_recipe(
        tiny_dataset,
        train__epochs=8,
        train__patience=1,
        optim__lr=1e-9,
        schedule__warmup_epochs=0,
        train__monitor="accuracy",
    )
    result = fit(recipe, run_dir=tmp_path / "run")
    assert result.stopped == "early_stopping"
    assert result.epochs_completed < 8


@pytest.mark.slow  # 50 s; `make demo` and bench/demo_wall.py train it too
def test_demo_recipe_beats_a_constant_predictor(tmp_path: Path) -> None:
    """The shipped demo recipe as the demo study trains it (8 epochs), writing elsewhere: QWK of
    any constant prediction is 0."""
    recipe = load_recipe(
        ROOT / "recipes" / "demo.yaml", {"data.root": str(tmp_path / "synth"), "train.epochs": 8}
    )
    result = fit(recipe, run_dir=tmp_path / "run")
    assert result.epochs_completed == recipe.train.epochs
    assert result.best["qwk"] > 0.4
    assert result.best["accuracy"] > 0.73  # the share of grade 0, what "always 0" scores


def test_gradient_accumulation_counts_optimizer_steps(tmp_path: Path, tiny_dataset: Path) -> None:
    recipe = make_recipe(
        tiny_dataset,
        train__grad_accum=2,
        train__epochs=2,
        schedule__warmup_epochs=0,
        schedule__name="step",
        schedule__step_epochs=1,
        schedule__gamma=0.5,
    )
    fit(recipe, run_dir=tmp_path / "run")
    info = json.loads((tmp_path / "run" / "run.json").read_text())
    assert info["steps_per_epoch"] == 2  # 3 batches of 16, accumulated in twos -> 2 steps
    log = read_log(tmp_path / "run")
    assert [r["lr"]["head"] for r in log] == [pytest.approx(2e-3), pytest.approx(1e-3)]


def test_loader_workers_do_not_change_results(tmp_path: Path, tiny_dataset: Path) -> None:
    """Batches and their augmentation are seeded per (seed, epoch, batch), not per worker."""
    results = []
    for workers in (0, 2):
        recipe = make_recipe(
            tiny_dataset, data__num_workers=workers, train__epochs=2, augment__strength=1.0
        )
        fit(recipe, run_dir=tmp_path / f"w{workers}")
        results.append(
            [
                r["val"] | {"train_loss": r["train"]["loss"]}
                for r in read_log(tmp_path / f"w{workers}")
            ]
        )
    assert results[0] == results[1]


def test_a_resumed_run_replays_its_curve_to_the_reporter(
    tmp_path: Path, tiny_dataset: Path
) -> None:
    recipe = make_recipe(tiny_dataset, train__epochs=4)

    def crash(epoch: int, metrics: dict) -> None:
        if epoch == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        fit(recipe, crash, run_dir=tmp_path / "run")
    seen: list[tuple[int, bool, int]] = []
    fit(
        recipe,
        lambda e, m: seen.append((e, bool(m.get("replayed")), m["best_epoch"])),
        run_dir=tmp_path / "run",
        resume=True,
    )
    assert [(e, r) for e, r, _ in seen] == [(1, True), (2, True), (3, False), (4, False)]
    logged = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [b for _, _, b in seen] == [r["best_epoch"] for r in logged]
    assert all("replayed" not in r for r in logged)  # the flag is for the reporter only


def test_monitor_objective_picks_the_epoch_the_study_would_rank_highest(
    tmp_path: Path, tiny_dataset: Path
) -> None:
    from drsearch.config.objective import ObjectiveConfig

    objective = ObjectiveConfig(
        metric="accuracy", constraints=[{"metric": "sensitivity_pdr", "min": 0.75}]
    )
    recipe = make_recipe(
        tiny_dataset, train__epochs=4, train__monitor="objective", train__objective=objective
    )
    result = fit(recipe, run_dir=tmp_path / "run")
    log = read_log(tmp_path / "run")
    scores = [objective.score(r["val"]) for r in log]
    assert [r["val"]["objective"] for r in log] == [pytest.approx(s.value) for s in scores]
    best = max(range(4), key=lambda i: (scores[i].value, -i)) + 1  # the first of the highest
    assert log[-1]["best_epoch"] == best and result.best_epoch == best
    with pytest.raises(Exception, match="train.objective: train.monitor: objective needs"):
        make_recipe(tiny_dataset, train__monitor="objective")


def test_a_run_paused_where_it_stopped_early_trains_nothing_more_on_resume(
    tmp_path: Path, tiny_dataset: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Promotion ASHA pauses a trial at its rung (the reporter stops it) at the very epoch its
    patience ran out; promoted later, it must end there, not train one more epoch."""
    from drsearch.train import trainer

    def never_better(self, epoch: int, value: float | None) -> bool:  # type: ignore[no-untyped-def]
        if self.best_epoch == 0:
            self.best_value, self.best_epoch = value, epoch
            return True
        self.bad_epochs += 1
        return False

    monkeypatch.setattr(trainer._Trainer, "_track_best", never_better)
    recipe = make_recipe(tiny_dataset, train__epochs=5, train__patience=1)

    def pause_at_two(epoch: int, metrics: dict) -> None:
        if epoch == 2 and not metrics.get("replayed"):
            raise StopTraining  # the rung at epoch 2: paused

    first = fit(recipe, pause_at_two, run_dir=tmp_path / "run")
    assert (first.stopped, first.epochs_completed) == ("reporter", 2)
    resumed = fit(recipe, lambda epoch, metrics: None, run_dir=tmp_path / "run", resume=True)
    assert (resumed.stopped, resumed.epochs_completed) == ("early_stopping", 2)
    assert len(read_log(tmp_path / "run")) == 2
