"""Power, up front: the chance a good model is certified, against the study's own judge and
the binomial distribution written out long-hand."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from drsearch.clinical import judge
from drsearch.search.power import (
    TARGET_POWER,
    images_for_power,
    power,
    power_line,
    rate_for_power,
    successes_needed,
)
from tests.conftest import write_tiny_study


def met_by_judge(minimum: float, n: int, x: int, confidence: float) -> bool:
    """The study's verdict on x of n PDR images referred (its own constraint metric)."""
    cm = [[0.0] * 5 for _ in range(5)]
    cm[4][4], cm[4][0] = float(x), float(n - x)
    return judge("referred_pdr", minimum, cm, "lower_bound", confidence).met


@pytest.mark.parametrize(
    ("minimum", "n", "confidence"),
    [(0.90, 15, 0.90), (0.95, 59, 0.90), (0.95, 295, 0.90), (0.825, 435, 0.95), (0.5, 4, 0.9)],
)
def test_power_is_the_binomial_tail_above_what_the_judge_certifies(
    minimum: float, n: int, confidence: float
) -> None:
    verdicts = [met_by_judge(minimum, n, x, confidence) for x in range(n + 1)]
    first = verdicts.index(True) if any(verdicts) else None
    assert verdicts == [first is not None and x >= first for x in range(n + 1)]  # monotone
    assert successes_needed(minimum, n, confidence) == first
    for rate in (minimum, (minimum + 1) / 2, 0.99):
        long_hand = sum(
            math.comb(n, x) * rate**x * (1 - rate) ** (n - x) for x in range(n + 1) if verdicts[x]
        )
        assert power(minimum, n, rate, confidence) == pytest.approx(long_hand, abs=1e-12)
    # the score test is approximate: a model exactly at the minimum is certified about
    # 1 - confidence of the time, more on very few images (15/15 certifies 0.90: 0.9 ** 15)
    if (minimum, n) == (0.90, 15):
        assert power(minimum, n, minimum, confidence) == pytest.approx(0.9**15)


def test_the_rate_and_the_images_that_give_80_percent() -> None:
    rate = rate_for_power(0.95, 295, 0.90)
    assert rate is not None
    assert power(0.95, 295, rate, 0.90) >= TARGET_POWER
    assert power(0.95, 295, rate - 1e-3, 0.90) < TARGET_POWER
    assert rate_for_power(0.95, 20, 0.90) is None  # 20 images cannot certify 0.95 at all
    n = images_for_power(0.95, 0.975, 0.90)
    assert n is not None
    assert all(power(0.95, m, 0.975, 0.90) >= TARGET_POWER for m in range(n, n + 20))
    assert power(0.95, n - 1, 0.975, 0.90) < TARGET_POWER
    assert images_for_power(0.95, 0.95, 0.90) is None  # a model at the minimum: never
    line, p = power_line("referred_pdr", 0.95, 59, 0.90, "validation images of grade 4", "more")
    assert p == pytest.approx(power(0.95, 59, 0.975, 0.90))
    assert line.startswith(
        f"power: referred_pdr >= 0.95 on 59 images (validation images of grade 4): a model at "
        f"0.975 is certified {math.floor(p * 100)}% of the time; 80% needs a model at "
    )
    assert f"with {n} images a model at 0.975 is certified 80% of the time (more)" in line
    # where the test is far looser than its nominal level, the line says so
    assert "a model at the minimum is certified" not in line
    line, _ = power_line("referred_pdr", 0.90, 15, 0.90, "validation", "more")
    assert "a model at the minimum 0.9 is certified 20% of the time (nominally 10%)" in line


def test_check_states_the_power_where_the_verdict_is_made(
    tmp_path: Path, tiny_dataset: Path
) -> None:
    """Without finalists the search's validation images decide; with finalists on folds, the
    pooled folds do: the line names those images and their power, and a low one warns."""
    from drsearch.config.study import load_study
    from drsearch.search.checks import check_inputs

    space = "optim.lr: {type: float, low: 1.0e-3, high: 1.0e-2, log: true}\n"
    loose = {"metric": "accuracy", "constraints": [{"metric": "referred_pdr", "min": 0.5}]}
    for finalists, n in ((None, 4), ({"top_k": 1, "folds": 4}, 16)):
        extra = {"finalists": finalists} if finalists else {}
        path = write_tiny_study(tmp_path, tiny_dataset, space, objective=loose, **extra)
        evidence: list[str] = []
        warnings = check_inputs(load_study(path), evidence=evidence)
        p = power(0.5, n, 0.75, 0.90)
        line = next(e for e in evidence if e.startswith("power: "))
        assert line.startswith(f"power: referred_pdr >= 0.5 on {n} images (")
        assert f"a model at 0.75 is certified {math.floor(p * 100)}% of the time" in line
        low = [w for w in warnings if "low power" in w]
        assert bool(low) == (p < TARGET_POWER), (p, warnings)


def test_run_says_low_power_before_the_study_starts_not_on_each_continuation(
    tmp_path: Path, tiny_dataset: Path
) -> None:
    from click.testing import CliRunner

    from drsearch.cli import cli

    space = "optim.lr: {type: float, low: 1.0e-3, high: 1.0e-2, log: true}\n"
    path = write_tiny_study(
        tmp_path, tiny_dataset, space, budget={"n_trials": 1}, pruner={"enabled": False},
        recipe_overrides={"train.epochs": 2},
    )  # fmt: skip
    runner = CliRunner()
    first = runner.invoke(cli, ["run", str(path), "--quiet"])
    assert first.exit_code == 0, first.output
    pct = math.floor(power(0.5, 4, 0.75, 0.90) * 100)
    said = (
        "low power: sensitivity_pdr >= 0.5 on 4 images (validation images of grade 4): "
        f"a model at 0.75 is certified {pct}% of the time"
    )
    assert said in first.output
    again = runner.invoke(cli, ["run", str(path), "--quiet", "--n-trials", "2"])
    assert again.exit_code == 0, again.output
    assert "low power" not in again.output
