"""bench/selection.py's simulation: its vectorised objective is drsearch's, its populations and
training noise give valid confusion rows, and a few studies run every rule."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

from drsearch.clinical import objective_score

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
selsim = pytest.importorskip("selsim")

from selsim.populations import DEFAULT, EXACT, LEVELS, POPULATIONS, train  # noqa: E402
from selsim.scoring import objective  # noqa: E402
from selsim.study import RULES, Setup  # noqa: E402
from selsim.tally import run_cell  # noqa: E402


def test_the_vectorised_objective_is_objective_score() -> None:
    rng = np.random.default_rng(1)
    for trial in range(400):
        cm = rng.multinomial(rng.integers(1, 60, 5), rng.dirichlet(np.ones(5) * 0.5, size=5))
        if trial % 5 == 0:
            cm[rng.integers(0, 5)] = 0  # a grade without images: its constraints undefined
        m = {"accuracy": float(np.trace(cm) / cm.sum()), "confusion_matrix": cm.tolist()}
        for cons in (DEFAULT, EXACT):
            for rule in ("point", "lower_bound"):
                s = objective_score("accuracy", list(cons), m, rule)
                value, primary, feasible = objective(cm, cons, rule)
                assert value == pytest.approx(s.value, abs=1e-12)
                assert primary == pytest.approx(s.primary) and bool(feasible) == s.feasible


@pytest.mark.parametrize("level", list(LEVELS))
def test_trained_models_have_valid_rows(level: str) -> None:
    rng = np.random.default_rng(2)
    for pop in POPULATIONS.values():
        rows = pop.draw(rng, 30)
        assert np.all(rows >= 0) and np.allclose(rows.sum(axis=-1), 1)
        models = train(rng, rows, LEVELS[level], 4)
        assert models.shape == (30, 4, 5, 5)
        assert np.all(models >= -1e-12) and np.allclose(models.sum(axis=-1), 1)
        if level == "none":
            assert np.allclose(models, rows[:, None])


def test_a_few_studies_run_every_rule_within_the_cap() -> None:
    for name in ("aptos", "independent"):
        cell = run_cell(Setup(POPULATIONS[name], "high"), reps=6, seed=3)
        assert set(cell["rules"]) == set(RULES)
        racing = cell["rules"]["lower bound + racing"]
        assert racing["units_max"] <= cell["policy"]["cap"]
        assert cell["rules"]["lower bound + fixed finalists"]["units"] == 15
        again = run_cell(Setup(POPULATIONS[name], "high"), reps=6, seed=3)
        assert again["rules"] == cell["rules"]  # the same draws, the same outcomes
