"""The study report: records (no plotly) first, then the HTML with every section."""

from __future__ import annotations

import re
from pathlib import Path

import optuna
import pytest
from click.testing import CliRunner

from drsearch.cli import cli
from drsearch.clinical import checklist
from drsearch.config.study import load_study
from drsearch.inspect.report.plots import SECTIONS
from drsearch.inspect.report.records import MIN_IMPORTANCE_TRIALS, TrialRow, build_records
from tests.conftest import write_tiny_study

SPACE = (
    "optim.lr: {type: float, low: 1.0e-4, high: 1.0e-2, log: true}\n"
    "loss.name: {type: categorical, choices: [ce, focal]}\n"
)


def row(**attrs: object) -> TrialRow:
    return TrialRow(0, "COMPLETE", 0.92, {}, {}, 10.0, 3, True, dict(attrs))


#: A medical-grade validation split: 2,500 images, every criterion met with room.
BASE = [
    [1000, 0, 0, 0, 0],
    [20, 480, 0, 0, 0],
    [0, 10, 490, 0, 0],
    [0, 0, 4, 196, 0],
    [0, 0, 0, 1, 299],
]


def attrs_of(*moves: tuple[int, int, int]) -> dict:
    """The metrics of ``BASE`` with ``(true, called, n)`` images moved from their correct call
    to ``called``."""
    import numpy as np

    from drsearch.train.metrics import compute_metrics

    cm = np.array(BASE)
    for true, called, n in moves:
        cm[true, true] -= n
        cm[true, called] += n
    labels = np.repeat(np.arange(5), cm.sum(1))
    preds = np.concatenate([np.repeat(np.arange(5), cm[g]) for g in range(5)])
    return compute_metrics(labels, np.eye(5)[preds])


def log(*accs: float) -> list[dict]:
    return [{"epoch": i + 1, "val": {"accuracy": a}} for i, a in enumerate(accs)]


def test_checklist_passes_a_medical_grade_trial() -> None:
    items = checklist(attrs_of(), log(0.80, 0.91, 0.92, 0.92))
    assert [i.name for i in items] == [
        "beats the trivial model",
        "overall accuracy",
        "severe NPDR sensitivity (grade 3)",
        "PDR sensitivity (grade 4)",
        "every per-grade specificity",
        "stable convergence",
    ]
    assert all(i.result == "pass" for i in items)
    acc = items[1]
    assert acc.lower == pytest.approx(0.9807, abs=1e-3)  # Wilson 95%, 2,465 of 2,500
    assert items[2].detail == "196/200 validation images of grade 3"
    assert items[5].observed == pytest.approx(1.0)


@pytest.mark.parametrize(
    ("moves", "accs", "failing", "result"),
    [
        (((1, 2, 150), (2, 1, 150)), (0.9, 0.9, 0.9), "overall accuracy", "fail"),  # 0.88
        (((3, 2, 36),), (0.9, 0.9, 0.9), "severe NPDR sensitivity (grade 3)", "fail"),  # 0.8
        (((4, 3, 29),), (0.9, 0.9, 0.9), "PDR sensitivity (grade 4)", "fail"),  # 0.9
        (((1, 0, 80), (2, 0, 100)), (0.9, 0.9, 0.9), "every per-grade specificity", "fail"),
        ((), (0.95, 0.89, 0.93), "stable convergence", "fail"),
        ((), (0.9,), "stable convergence", "inconclusive"),
        # 0.935: its 95% interval (0.90-0.96) straddles 0.95
        (((4, 3, 19),), (0.9, 0.9, 0.9), "PDR sensitivity (grade 4)", "inconclusive"),
    ],
)
def test_checklist_fails_each_criterion(
    moves: tuple, accs: tuple, failing: str, result: str
) -> None:
    items = {i.name: i.result for i in checklist(attrs_of(*moves), log(*accs))}
    assert {name: r for name, r in items.items() if r != "pass"} == {failing: result}


@pytest.mark.e2e
def test_report_of_a_real_study(tmp_path: Path, tiny_dataset: Path) -> None:
    path = write_tiny_study(
        tmp_path,
        tiny_dataset,
        SPACE,
        budget={"n_trials": 4},
        # ASHA rungs at epochs 1 and 3: some of the 4 are pruned
        pruner={"metric": "referable_auc", "grace_period": 1, "reduction_factor": 3},
        report={"gpu_hour_price": 2.5},
    )
    from drsearch.search.runners import run_study

    run_study(load_study(path))
    loaded = load_study(path)
    study = optuna.load_study(study_name="tiny", storage=loaded.config.storage_url())
    records = build_records(loaded, study)
    assert len(records.trials) == 4 and len(records.history) >= 1
    complete = [t for t in records.trials if t.state == "COMPLETE"]
    assert records.best is not None and records.best.number in {t.number for t in complete}
    assert records.best_curve and len(records.best_curve) == records.best.epochs
    assert {p.group for p in records.best_lr} == {"backbone", "head"}
    assert len(records.checklist) == 6
    assert records.compute.trial_hours > 0 and records.compute.cost == 0.0  # no GPU asked
    assert records.parallel_params == ["optim.lr", "loss.name"]

    result = CliRunner().invoke(cli, ["report", str(path), "--out", str(tmp_path / "rep")])
    assert result.exit_code == 0, result.output
    page = (tmp_path / "rep" / "report.html").read_text()
    assert re.findall(r"<section id='(\w+)'", page) == list(SECTIONS)
    assert "<script src=" not in page  # offline: plotly.js is inline, no CDN
    assert page.count("plotly.js v") == 1  # embedded once
    # fANOVA on 4 trials means nothing: hidden, and the page says why; parallel coordinates
    # and slices need 2 complete trials, which this tiny study's pruning may not leave
    assert records.importances == {} and "need at least 8 complete trials" in page
    compared = 2 if len(complete) >= 2 else 0
    assert page.count("Plotly.newPlot") == 6 + compared
    assert page.count("Not enough complete trials") == 2 - compared
    assert "Medical-grade checklist" in page and "Compute spent" in page


def test_report_before_the_study_exists(tmp_path: Path, tiny_dataset: Path) -> None:
    path = write_tiny_study(tmp_path, tiny_dataset, SPACE)
    result = CliRunner().invoke(cli, ["report", str(path)])
    assert result.exit_code == 2 and "no study 'tiny' in sqlite:///" in result.output
    assert "yet; run it first" in result.output and not (tmp_path / "runs").exists()


def test_importances_are_fanova_and_find_the_parameter_that_matters() -> None:
    from drsearch.inspect.report.records import _importances

    study = optuna.create_study(direction="maximize", sampler=optuna.samplers.RandomSampler(0))
    study.optimize(
        lambda t: 10 * t.suggest_float("lr", 0, 1) + 0.01 * t.suggest_float("wd", 0, 1),
        n_trials=30,
    )
    rows = [
        TrialRow(t.number, "COMPLETE", t.value, t.params, {}, 1.0, 1, True, {})
        for t in study.trials
    ]
    got = _importances(study, rows)
    expected = optuna.importance.get_param_importances(
        study, evaluator=optuna.importance.FanovaImportanceEvaluator(seed=0)
    )
    assert got == pytest.approx(dict(expected))
    assert got["lr"] > 0.9 > got["wd"]
    assert _importances(study, rows[: MIN_IMPORTANCE_TRIALS - 1]) == {}  # too few to mean much
