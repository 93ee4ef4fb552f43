"""The report as a reader sees it: opened offline in a real headless Chromium.

Chromium comes from the system's package manager (``.ci/run`` installs it like PostgreSQL;
playwright's own browser download cannot reach the internet here) and is driven by playwright
with ``executable_path``. The study is written straight into its Optuna storage (twelve
trials: complete, pruned, infeasible and failed ones, with run folders on disk), so every
section has data without training. A screenshot of the first screen and of the whole page is
kept under ``test-artifacts/`` (or ``$DRSEARCH_TEST_ARTIFACTS``) for a person to look at.
"""

from __future__ import annotations

import json
import math
import os
import random
import shutil
from pathlib import Path

import optuna
import pytest
from click.testing import CliRunner
from optuna.distributions import CategoricalDistribution, FloatDistribution
from optuna.trial import TrialState, create_trial

from drsearch.cli import cli
from drsearch.config.study import load_study
from drsearch.inspect.report.plots import SECTIONS
from tests.conftest import write_tiny_study

CHROMIUM = os.environ.get("DRSEARCH_TEST_CHROMIUM") or shutil.which("chromium")
ARTIFACTS = Path(
    os.environ.get("DRSEARCH_TEST_ARTIFACTS", Path(__file__).parents[1] / "test-artifacts")
)
SPACE = (
    "optim.lr: {type: float, low: 1.0e-4, high: 1.0e-2, log: true}\n"
    "optim.weight_decay: {type: float, low: 1.0e-6, high: 1.0e-2, log: true}\n"
    "loss.name: {type: categorical, choices: [ce, focal]}\n"
    "augment.mixup_alpha: {type: float, low: 0.0, high: 0.4}\n"
)
DISTRIBUTIONS = {
    "optim.lr": FloatDistribution(1e-4, 1e-2, log=True),
    "optim.weight_decay": FloatDistribution(1e-6, 1e-2, log=True),
    "loss.name": CategoricalDistribution(["ce", "focal"]),
    "augment.mixup_alpha": FloatDistribution(0.0, 0.4),
}


def fill_study(storage: str, runs: Path) -> None:
    """Twelve trials shaped like a real study's records (seeded, so the page is stable)."""
    rng = random.Random(0)
    study = optuna.create_study(study_name="browse", storage=storage, direction="maximize")
    for n in range(12):
        state = TrialState.FAIL if n == 5 else TrialState.PRUNED if n % 3 == 2 else None
        params = {
            "optim.lr": 10 ** rng.uniform(-4, -2),
            "optim.weight_decay": 10 ** rng.uniform(-6, -2),
            "loss.name": rng.choice(["ce", "focal"]),
            "augment.mixup_alpha": rng.uniform(0, 0.4),
        }
        # the LR is what matters: near 3e-3 the severe grades are found, far from it not
        quality = 1 - abs(math.log10(params["optim.lr"] / 3e-3)) * 0.6
        epochs = 2 if state == TrialState.PRUNED else 6
        curve = {e: 0.5 + quality * 0.4 * (1 - 0.5**e) + rng.uniform(-0.02, 0.02) for e in
                 range(1, epochs + 1)}  # fmt: skip
        acc = max(curve.values())
        sens = [0.97, 0.55, 0.8, 0.85 + 0.1 * quality, 0.9 + 0.08 * quality]
        spec = [0.93, 0.97, 0.92, 0.99, 0.99]
        run_dir = runs / f"trial_{n:04d}"
        run_dir.mkdir(parents=True)
        log = [
            {
                "epoch": e,
                "train": {"accuracy": min(1.0, v + 0.05)},
                "val": {"accuracy": v},
                "lr_first": {
                    "backbone": params["optim.lr"] * 0.1 * e / epochs,
                    "head": params["optim.lr"] * e / epochs,
                },
                "lr": {"backbone": params["optim.lr"] * 0.1, "head": params["optim.lr"]},
            }  # fmt: skip
            for e, v in curve.items()
        ]
        (run_dir / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in log))
        attrs = {
            "accuracy": acc,
            "qwk": 0.8 * quality,
            "sensitivity": sens,
            "specificity": spec,
            "support": [60, 12, 30, 8, 10],
            "sensitivity_wilson_lower": [s - 0.15 for s in sens],
            "sensitivity_severe_npdr": sens[3],
            "sensitivity_pdr": sens[4],
            "min_specificity": min(spec),
            "confusion_matrix": [
                [58, 1, 1, 0, 0],
                [3, 7, 2, 0, 0],
                [2, 2, 24, 2, 0],
                [0, 0, 1, 7, 0],
                [0, 0, 0, 1, 9],
            ],  # fmt: skip
            "feasible": sens[3] >= 0.9 and sens[4] >= 0.95,
            "run_dir": str(run_dir),
            "wall_seconds": 30.0 * epochs,
            "epochs_completed": epochs,
            "best_epoch": max(curve, key=curve.get),
        }
        constraints = {"sensitivity_severe_npdr": 0.9 - sens[3], "sensitivity_pdr": 0.95 - sens[4]}
        system = {
            "constraints": list(constraints.values()),
            "drsearch:constraint_names": list(constraints),
        }
        if state == TrialState.FAIL:
            trial = create_trial(state=state, params=params, distributions=DISTRIBUTIONS,
                                 user_attrs={"fail_reason": "CUDA out of memory"})  # fmt: skip
        else:
            penalty = (
                0.0 if attrs["feasible"] else 1.0 + sum(max(v, 0) for v in constraints.values())
            )
            trial = create_trial(
                state=state or TrialState.COMPLETE,
                value=None if state else acc - penalty,
                params=params,
                distributions=DISTRIBUTIONS,
                intermediate_values=curve,
                user_attrs=attrs,
                system_attrs=system,
            )
        study.add_trial(trial)


@pytest.mark.skipif(CHROMIUM is None, reason="no chromium (apt-get install chromium)")
def test_report_opens_offline_in_a_browser_with_data_in_every_figure(
    tmp_path: Path, tiny_dataset: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from playwright.sync_api import sync_playwright

    path = write_tiny_study(
        tmp_path,
        tiny_dataset,
        SPACE,
        name="browse",
        objective={"metric": "accuracy", "constraints": [
            {"metric": "sensitivity_severe_npdr", "min": 0.9},
            {"metric": "sensitivity_pdr", "min": 0.95}]},
    )  # fmt: skip
    (tmp_path / "runs").mkdir()
    fill_study(load_study(path).config.storage_url(), tmp_path / "runs" / "browse")
    monkeypatch.chdir(tmp_path)  # the report's default folder is relative: reports/<name>/
    result = CliRunner().invoke(cli, ["report", "browse.yaml"])
    assert result.exit_code == 0, result.output
    page_file = tmp_path / "reports" / "browse" / "report.html"
    assert page_file.is_file()

    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    problems: list[str] = []
    outside: list[str] = []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        page.on("console", lambda m: problems.append(m.text) if m.type == "error" else None)
        page.on("pageerror", lambda e: problems.append(str(e)))

        def offline(route: object) -> None:
            url = route.request.url  # type: ignore[attr-defined]
            if url.startswith(("file:", "data:", "blob:")):
                route.continue_()  # type: ignore[attr-defined]
            else:
                outside.append(url)
                route.abort()  # type: ignore[attr-defined]

        page.route("**/*", offline)
        page.goto(page_file.as_uri(), wait_until="load")
        page.wait_for_function("document.querySelectorAll('.js-plotly-plot').length >= 9")
        figures = page.evaluate(
            """() => [...document.querySelectorAll('.js-plotly-plot')].map(gd => ({
                id: gd.id,
                traces: gd.data.length,
                points: gd.data.map(t => (t.x || t.z || t.values || t.dimensions || []).length),
                ytitle: ((gd.layout.yaxis || {}).title || {}).text || '',
            }))"""
        )
        page.screenshot(path=str(ARTIFACTS / "report-first-screen.png"))
        page.screenshot(path=str(ARTIFACTS / "report-full-page.png"), full_page=True)
        sections = page.eval_on_selector_all("section", "els => els.map(e => e.id)")
        empty = page.eval_on_selector_all(".empty", "els => els.map(e => e.textContent)")
        browser.close()

    assert problems == [] and outside == []  # loads offline, no console errors
    assert sections == list(SECTIONS) and empty == []
    drawn = {f["id"]: f for f in figures}
    assert sorted(drawn) == sorted(f"fig-{s}" for s in SECTIONS[:-3])  # all but the tables
    for f in figures:
        assert f["traces"] > 0 and all(n > 0 for n in f["points"]), f
    curves = drawn["fig-curves"]
    assert curves["traces"] == 11 and curves["ytitle"] == "validation accuracy, best so far"
    assert drawn["fig-constraints"]["traces"] == 4  # two constraints, each with its minimum
    assert drawn["fig-lr"]["traces"] == 2  # backbone and head
