"""Held-out evaluation: the test split, its statistics against references, and `evaluate`."""

from __future__ import annotations

import csv
import json
import math
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml
from click.testing import CliRunner
from hypothesis import given, settings
from hypothesis import strategies as st

from drsearch.clinical import wilson_interval
from drsearch.data.records import ImageRecord
from drsearch.data.split import held_out_indices, split_indices
from drsearch.inspect import stats


# -- the test split --------------------------------------------------------------------------
@settings(max_examples=40, deadline=None)
@given(
    n_patients=st.integers(12, 60),
    eyes=st.integers(1, 3),
    val_fraction=st.sampled_from([0.1, 0.2, 0.3]),
    test_fraction=st.sampled_from([0.1, 0.15, 0.25]),
    seed=st.integers(0, 2**16),
)
def test_no_patient_of_the_test_split_is_in_training_or_validation(
    n_patients: int, eyes: int, val_fraction: float, test_fraction: float, seed: int
) -> None:
    rng = np.random.default_rng(seed)
    records = [
        ImageRecord(f"{p}_{e}", Path(f"{p}_{e}.png"), int(rng.integers(0, 5)), f"p{p}")
        for p in range(n_patients)
        for e in range(eyes)
    ]
    sides = split_indices(records, val_fraction, seed, test_fraction)
    patients = {k: {records[i].patient_id for i in v} for k, v in sides._asdict().items()}
    assert not patients["test"] & (patients["train"] | patients["val"])
    assert not patients["train"] & patients["val"]
    assert sorted(np.concatenate(sides).tolist()) == list(range(len(records)))
    # the test side is carved first: it does not move when the validation fraction does
    other = split_indices(records, 0.2 if val_fraction != 0.2 else 0.1, seed, test_fraction)
    assert np.array_equal(sides.test, other.test)
    assert np.array_equal(sides.test, held_out_indices(records, test_fraction, seed))


def test_no_test_fraction_keeps_the_old_split_and_a_test_source_is_held_out() -> None:
    labels = [0] * 50 + [1] * 20 + [2] * 20 + [3] * 5 + [4] * 5
    records = [ImageRecord(str(i), Path(f"{i}.png"), g) for i, g in enumerate(labels)]
    train, val, test = split_indices(records, 0.2, seed=0)
    assert len(test) == 0 and np.bincount([labels[i] for i in val]).tolist() == [10, 4, 4, 1, 1]
    train3, val3, test3 = split_indices(records, 0.2, seed=0, test_fraction=0.2)
    assert np.bincount([labels[i] for i in test3]).tolist() == [10, 4, 4, 1, 1]
    assert np.bincount([labels[i] for i in val3]).tolist() == [10, 4, 4, 1, 1]
    assert len(train3) == 60
    tagged = [ImageRecord("t", Path("t.png"), 4, use="test"), *records]
    assert split_indices(tagged, 0.2, seed=0).test.tolist() == [0]


def test_a_run_never_decodes_or_fingerprints_test_images_as_its_own(
    tmp_path: Path, tiny_dataset: Path
) -> None:
    from drsearch.train.prepare import prepare_data
    from tests.conftest import make_recipe

    cfg = make_recipe(tiny_dataset, data__test_fraction=0.25).data
    data = prepare_data(cfg)
    assert len(data.test_ids) == 20
    assert not set(data.test_ids) & {r.id for r in data.records}
    assert data.cache.arrays[32].shape[0] == 60  # the test images were never decoded


def test_fractions_must_leave_room_for_training(tiny_dataset: Path) -> None:
    from drsearch.errors import ConfigError
    from tests.conftest import make_recipe

    with pytest.raises(ConfigError, match="val_fraction \\+ test_fraction"):
        make_recipe(tiny_dataset, data__test_fraction=0.7, data__val_fraction=0.25)


# -- statistics against references -----------------------------------------------------------
@pytest.mark.parametrize("k,n", [(0, 10), (3, 10), (10, 10), (81, 263), (1, 1), (97, 100)])
def test_wilson_matches_scipy(k: int, n: int) -> None:
    from scipy.stats import binomtest

    ref = binomtest(k, n).proportion_ci(0.95, method="wilson")
    low, high = wilson_interval(k, n)  # type: ignore[misc]
    assert low == pytest.approx(ref.low, abs=1e-9) and high == pytest.approx(ref.high, abs=1e-9)
    e = stats.proportion(k, n)
    assert (e.value, e.low, e.high) == (k / n, low, high)


def _reference_bootstrap(labels, statistic, n, seed):  # type: ignore[no-untyped-def]
    """The stratified bootstrap written out the long way."""
    rng = np.random.default_rng(seed)
    by_grade = {g: [i for i, y in enumerate(labels) if y == g] for g in sorted(set(labels))}
    values = []
    for _ in range(n):
        idx = []
        for members in by_grade.values():
            idx.extend(rng.choice(np.array(members), size=len(members), replace=True).tolist())
        v = statistic(np.array(idx))
        if v is not None:
            values.append(v)
    return float(np.percentile(values, 2.5)), float(np.percentile(values, 97.5))


def test_auc_and_kappa_equal_sklearn_and_their_bootstrap_the_reference() -> None:
    from sklearn.metrics import cohen_kappa_score, roc_auc_score

    rng = np.random.default_rng(3)
    labels = rng.integers(0, 5, 120)
    preds = np.clip(labels + rng.integers(-1, 2, 120), 0, 4)
    score = labels / 4 + rng.normal(0, 0.3, 120)
    truth = labels >= 2
    auc = stats.auc_estimate(truth, score, seed=5)
    assert auc.value == pytest.approx(roc_auc_score(truth, score), abs=1e-12)
    ref = _reference_bootstrap(
        truth.astype(int).tolist(), lambda i: roc_auc_score(truth[i], score[i]), 1000, 5
    )
    assert (auc.low, auc.high) == pytest.approx(ref, abs=1e-9)
    qwk = stats.qwk_estimate(labels, preds, seed=5)
    assert qwk.value == pytest.approx(cohen_kappa_score(labels, preds, weights="quadratic"))
    ref = _reference_bootstrap(
        labels.tolist(),
        lambda i: cohen_kappa_score(labels[i], preds[i], weights="quadratic"),
        1000,
        5,
    )
    assert (qwk.low, qwk.high) == pytest.approx(ref, abs=1e-9)
    assert qwk.low < qwk.value < qwk.high


def test_fast_auc_is_sklearns_with_ties() -> None:
    from sklearn.metrics import roc_auc_score

    rng = np.random.default_rng(0)
    for _ in range(20):
        truth = rng.random(50) < 0.3
        score = np.round(rng.random(50), 1)  # many ties
        if truth.any() and not truth.all():
            assert stats.auc(truth, score) == pytest.approx(roc_auc_score(truth, score))
    assert stats.auc(np.array([True, True]), np.array([0.1, 0.2])) is None


def _long_hand_patient_bootstrap(labels, patients, statistic, n, seed):  # type: ignore[no-untyped-def]
    """Patients drawn with replacement within the strata of their worst grade, written out."""
    rng = np.random.default_rng(seed)
    order = list(dict.fromkeys(patients))  # patients in order of their first image
    eyes = {p: [i for i, q in enumerate(patients) if q == p] for p in order}
    worst = {p: max(labels[i] for i in eyes[p]) for p in order}
    strata = {
        w: [k for k, p in enumerate(order) if worst[p] == w] for w in sorted(set(worst.values()))
    }
    values = []
    for _ in range(n):
        idx = []
        for members in strata.values():
            for k in rng.choice(np.array(members), size=len(members), replace=True):
                idx.extend(eyes[order[k]])
        v = statistic(np.array(idx))
        if v is not None:
            values.append(v)
    return float(np.percentile(values, 2.5)), float(np.percentile(values, 97.5))


def test_intervals_respect_patients() -> None:
    """Two eyes per patient: the bootstrap draws patients (within the strata of their worst
    grade), as the long-hand reference does; proportions then use it instead of Wilson, and
    the interval widens when a patient's eyes agree."""
    from sklearn.metrics import roc_auc_score

    rng = np.random.default_rng(4)
    worst = rng.choice(5, 60, p=[0.5, 0.1, 0.2, 0.1, 0.1])
    labels = np.repeat(worst, 2)
    labels[1::2] = np.minimum(labels[1::2], rng.integers(0, 5, 60))
    patients = [f"p{i // 2}" for i in range(120)]
    # the same call for both eyes of a patient: images are not independent
    preds = np.repeat(np.where(rng.random(60) < 0.7, worst, rng.integers(0, 5, 60)), 2)
    score = labels / 4 + np.repeat(rng.normal(0, 0.3, 60), 2)
    truth = labels >= 2
    e = stats.auc_estimate(truth, score, 5, patients, labels)
    ref = _long_hand_patient_bootstrap(
        labels.tolist(), patients, lambda i: roc_auc_score(truth[i], score[i]), 1000, 5
    )
    assert e.method == "patient bootstrap" and (e.low, e.high) == pytest.approx(ref, abs=1e-9)
    correct = preds == labels
    acc = stats.proportion_estimate(correct, np.ones(120, bool), labels, patients, 5)
    ref = _long_hand_patient_bootstrap(
        labels.tolist(), patients, lambda i: float(correct[i].mean()), 1000, 5
    )
    assert (acc.low, acc.high) == pytest.approx(ref, abs=1e-9)
    assert acc.successes == int(correct.sum()) and acc.n == 120
    wilson = stats.proportion(int(correct.sum()), 120)
    assert acc.high - acc.low > wilson.high - wilson.low  # 60 patients, not 120 images
    # one image per patient: the patient bootstrap is the stratified one, Wilson for shares
    single = [f"i{i}" for i in range(120)]
    assert stats.proportion_estimate(correct, np.ones(120, bool), labels, single) == wilson


def _long_hand_wilson(successes: float, n: int, z: float = 1.959963984540054) -> tuple:
    """Wilson's score interval written out (Wilson 1927; Agresti & Coull 1998, eq. 2)."""
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z / (1 + z * z / n) * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return centre - half, centre + half


def test_a_collapsed_patient_bootstrap_falls_back_to_wilson_on_the_patients_behind_it() -> None:
    """40/40 grade-4 images from 20 patients among 500: every resample agrees, so the interval
    is Wilson's on the 20 patients behind the proportion (0.839), not on all 500 patients of
    the set (0.992, what it was) nor on the 40 images (0.912)."""
    labels = np.array([4] * 40 + [0] * 960)
    patients = [f"p{i // 2}" for i in range(1000)]  # two eyes each: 20 PDR patients of 500
    preds = labels.copy()
    e = stats.proportion_estimate(preds == 4, labels == 4, labels, patients, 0)
    assert e.low == pytest.approx(_long_hand_wilson(20, 20)[0], abs=1e-12)
    assert e.low == pytest.approx(0.8389, abs=1e-4) and e.high == 1.0
    assert (e.value, e.successes, e.n, e.patients) == (1.0, 40, 40, 20)
    assert e.method == "Wilson (20 patients)"
    # shares counted per patient: 20 patients each with one of its two eyes called 4
    half = preds.copy()
    half[1:40:2] = 3
    e = stats.proportion_estimate(half == 4, labels == 4, labels, patients, 0)
    assert (e.value, e.patients) == (0.5, 20)
    assert (e.low, e.high) == pytest.approx(_long_hand_wilson(10, 20), abs=1e-12)
    # patients of unequal size (1 to 3 eyes), all called: n is the 12 patients, not 24 images
    sizes = [1, 2, 3] * 4
    ids = [f"q{p}" for p, k in enumerate(sizes) for _ in range(k)]
    grade = np.array([4] * 24 + [0] * 50)
    ids += [f"r{i}" for i in range(50)]
    e = stats.proportion_estimate(grade == 4, grade == 4, grade, ids, 0)
    assert e.patients == 12 and e.low == pytest.approx(_long_hand_wilson(12, 12)[0], abs=1e-12)


def test_an_operating_point_on_too_few_positives_says_so() -> None:
    from drsearch.inspect.evaluate import Options, _operating_points

    labels = np.array([0] * 30 + [2] * 10 + [3] * 5)
    probs = np.eye(5)[labels] * 0.8 + 0.04
    points = _operating_points(labels, probs, Options(), None)
    # 0.975 needs 40 positives before one miss is allowed: 15 referable, 5 VTDR
    assert "only 15 positive validation images for referable" in points["referable"]["warning"]
    assert "one miss is allowed from 40 images on" in points["referable"]["warning"]
    many = np.array([0] * 30 + [2] * 40 + [3] * 40)
    ok = _operating_points(many, np.eye(5)[many] * 0.8 + 0.04, Options(), None)
    assert "warning" not in ok["referable"]


@settings(max_examples=60, deadline=None)
@given(
    n=st.integers(5, 80),
    target=st.floats(0.5, 1.0),
    seed=st.integers(0, 2**16),
    ties=st.booleans(),
)
def test_operating_point_reaches_its_target_on_the_data_it_was_chosen_on(
    n: int, target: float, seed: int, ties: bool
) -> None:
    rng = np.random.default_rng(seed)
    truth = rng.random(n) < 0.4
    truth[:2] = [True, False]
    score = rng.random(n)
    if ties:
        score = np.round(score, 1)
    t = stats.threshold_for_sensitivity(truth, score, target)
    assert (score[truth] >= t).mean() >= target - 1e-12
    higher = score[truth][score[truth] > t]  # any higher threshold misses the target
    assert len(higher) == 0 or (score[truth] >= higher.min()).mean() < target
    s = stats.threshold_for_specificity(truth, score, target)
    assert (score[~truth] < s).mean() >= target - 1e-12
    lower = score[~truth][score[~truth] < s]
    assert len(lower) == 0 or (score[~truth] < lower.max()).mean() < target


def test_expected_calibration_error_by_hand() -> None:
    probs = np.array([[0.9, 0.1, 0, 0, 0], [0.9, 0.1, 0, 0, 0], [0.2, 0.6, 0.2, 0, 0],
                      [0.2, 0.6, 0.2, 0, 0]])  # fmt: skip
    labels = np.array([0, 1, 1, 1])
    # bins (15 equal): 0.9 holds two images, accuracy 0.5; 0.6 holds two, accuracy 1.0
    got = stats.calibration(probs, labels)
    assert got["ece"] == pytest.approx(0.5 * abs(0.5 - 0.9) + 0.5 * abs(1.0 - 0.6))
    assert [b["n"] for b in got["bins"]] == [2, 2]


def test_per_grade_calibration_is_scikit_learns_calibration_curve() -> None:
    from sklearn.calibration import calibration_curve

    rng = np.random.default_rng(3)
    probs = rng.dirichlet(np.ones(5) * 0.7, size=400)
    probs[:7, 2] = 0.3  # values on a bin edge land in the lower bin, as scikit-learn's do
    probs[:7] /= probs[:7].sum(1, keepdims=True)
    labels = np.array([rng.choice(5, p=p) for p in probs])
    got = stats.grade_calibration(probs, labels, n_bins=10)
    for g in range(5):
        observed, predicted = calibration_curve(labels == g, probs[:, g], n_bins=10)
        bins = got[g]["bins"]
        assert np.allclose([b["observed"] for b in bins], observed)
        assert np.allclose([b["predicted"] for b in bins], predicted)
        n = np.array([b["n"] for b in bins])
        gaps = np.abs(np.array(observed) - np.array(predicted))
        assert got[g]["ece"] == pytest.approx(float((n * gaps).sum() / len(labels)))
        assert got[g]["n"] == int((labels == g).sum())


def test_temperature_scaling_recovers_an_overconfident_models_temperature() -> None:
    from scipy.special import softmax

    rng = np.random.default_rng(0)
    logits = rng.normal(0, 1.5, (4000, 5))
    labels = np.array([rng.choice(5, p=p) for p in softmax(logits, axis=1)])
    t = stats.fit_temperature(3.0 * logits, labels, lambda o: softmax(o, axis=1))
    assert t == pytest.approx(3.0, rel=0.08)
    before = stats.calibration(softmax(3.0 * logits, axis=1), labels)["ece"]
    after = stats.calibration(softmax(3.0 * logits / t, axis=1), labels)["ece"]
    assert after < before / 3


# -- drsearch evaluate, as a user runs it ----------------------------------------------------
# learning rates at which the tiny model learns within 5 epochs: the tests below want two
# feasible trials (an ensemble of two), whatever the study's seeded draws are
SPACE = "optim.lr: {type: float, low: 1.5e-3, high: 3.0e-3, log: true}\n"


@pytest.fixture
def held_out_study(tmp_path: Path, tiny_dataset: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A finished tiny study with a held-out test split, run from its folder with relative
    paths (data in the APTOS layout on disk)."""
    from tests.conftest import tiny_recipe_dict

    shutil.copytree(tiny_dataset, tmp_path / "data")
    monkeypatch.chdir(tmp_path)
    # 5 epochs: enough for the tiny models to beat the trivial model (a degenerate one is
    # never feasible, and an ensemble or a winner is made of feasible trials)
    recipe = tiny_recipe_dict(Path("data"), **{"data.test_fraction": 0.25, "train.epochs": 5})
    Path("recipe.yaml").write_text(yaml.safe_dump(recipe))
    Path("space.yaml").write_text(SPACE)
    study = {
        "name": "held", "recipe": "recipe.yaml", "search_space": "space.yaml",
        "objective": {"metric": "accuracy", "constraints": []}, "pruner": {"enabled": False},
        "sampler": {"name": "random", "seed": 0}, "budget": {"n_trials": 2},
        "resources": {"cpus_per_trial": 1, "max_concurrent": 1}, "executor": "local",
        "run_root": "runs",
    }  # fmt: skip
    Path("held.yaml").write_text(yaml.safe_dump(study))
    result = CliRunner().invoke(cli(), ["run", "held.yaml", "--quiet"])
    assert result.exit_code == 0, result.output
    assert "drsearch evaluate held.yaml" in result.output  # a next step once a test set is held
    return Path("held.yaml")


def cli():  # type: ignore[no-untyped-def]
    from drsearch.cli import cli as group

    return group


@pytest.mark.e2e
def test_evaluate_measures_the_test_split_with_thresholds_chosen_on_validation(
    held_out_study: Path,
) -> None:
    from sklearn.metrics import accuracy_score, cohen_kappa_score, recall_score, roc_auc_score

    result = CliRunner().invoke(cli(), ["evaluate", str(held_out_study), "--temperature"])
    assert result.exit_code == 0, result.output
    assert "on the held-out test set (20 images" in result.output
    (found,) = Path("reports/held").glob("evaluation-trial*.json")
    record = json.loads(found.read_text())
    assert found.with_suffix(".html").stat().st_size > 100_000
    test, val = record["test"], record["validation"]
    # figures equal scikit-learn's on the saved predictions
    y, p = np.array(test["predictions"]["label"]), np.array(test["predictions"]["pred"])
    probs = np.array(test["predictions"]["probs"])
    assert test["accuracy"]["value"] == pytest.approx(accuracy_score(y, p))
    assert test["qwk"]["value"] == pytest.approx(cohen_kappa_score(y, p, weights="quadratic"))
    recalls = recall_score(y, p, average=None, labels=range(5), zero_division=np.nan)
    for g in range(5):
        got = test["per_grade"][g]["sensitivity"].get("value")
        assert (got is None and math.isnan(recalls[g])) or got == pytest.approx(recalls[g])
    ref = test["endpoints"]["referable"]
    assert ref["auc"]["value"] == pytest.approx(roc_auc_score(y >= 2, probs[:, 2:].sum(1)), 1e-5)
    # the operating point was chosen on validation and meets its target there ...
    vy, vprobs = np.array(val["predictions"]["label"]), np.array(val["predictions"]["probs"])
    threshold = record["operating_points"]["referable"]["threshold"]
    assert record["operating_points"]["referable"]["chosen_on"] == "validation"
    assert (vprobs[vy >= 2, 2:].sum(1) >= threshold - 1e-5).mean() >= 0.975  # probs: 6 places
    # ... and the test figure uses that stored threshold, not one refitted on test
    called = probs[:, 2:].sum(1) >= threshold - 1e-5
    assert ref["at_operating_point"]["sensitivity"]["successes"] == int((called & (y >= 2)).sum())
    assert record["data"]["n_test"] == 20 and record["data"]["n_val"] == 20
    assert record["checklist"][1]["detail"].endswith("/20 test images")
    # the gallery: every test image of grade 3 or 4 given another grade, the worst first
    misses = test["severe_misses"]
    expected = {i for i in range(len(y)) if y[i] >= 3 and p[i] != y[i]}
    assert {test["predictions"]["ids"].index(m["id"]) for m in misses} == expected
    assert [m["label"] for m in misses] == sorted((m["label"] for m in misses), reverse=True)
    for m in misses:
        i = test["predictions"]["ids"].index(m["id"])
        assert m["p_referable"] == pytest.approx(probs[i, 2:].sum(), abs=1e-5)
        assert m["referable_call"] == (probs[i, 2:].sum() >= threshold)
    page = found.with_suffix(".html").read_text()
    assert page.count("<figure") == len(misses) > 0  # each a thumbnail of its image
    assert page.count("data:image/jpeg;base64,") == len(misses)
    assert "Confusion matrix on test" in page and "Per-grade calibration on test" in page


@pytest.mark.e2e
def test_an_exported_recipe_evaluates_to_the_same_figures_with_its_stored_choices(
    held_out_study: Path,
) -> None:
    runner = CliRunner()
    assert runner.invoke(cli(), ["evaluate", str(held_out_study), "--temperature"]).exit_code == 0
    out = runner.invoke(
        cli(), ["export", str(held_out_study), "-o", "recipes/b.yaml", "--weights", "recipes/b.pt"]
    )
    assert out.exit_code == 0, out.output
    pinned = yaml.safe_load(Path("recipes/b.yaml").read_text())["pinned"]["evaluation"]
    assert pinned["operating_points"]["referable"]["chosen_on"] == "validation"
    assert pinned["temperature"] > 0
    again = runner.invoke(cli(), ["evaluate", "recipes/b.yaml", "--weights", "recipes/b.pt"])
    assert again.exit_code == 0, again.output
    (found,) = Path("reports/held").glob("evaluation-trial*.json")
    first = json.loads(found.read_text())
    second = json.loads(Path("reports/b/evaluation-b.json").read_text())
    assert second["operating_points"]["referable"]["from"] == "the exported file"
    assert _without_paths(second["test"]) == _without_paths(first["test"])
    # weights of another recipe file are refused
    Path("recipes/c.yaml").write_text(Path("recipes/b.yaml").read_text() + "# edited\n")
    bad = runner.invoke(cli(), ["evaluate", "recipes/c.yaml", "--weights", "recipes/b.pt"])
    assert bad.exit_code == 2 and "exported with another recipe file" in bad.output
    _predict_equals_the_evaluation(runner, ["recipes/b.yaml", "--weights", "recipes/b.pt"], second)


def _without_paths(side: dict[str, Any]) -> dict[str, Any]:
    """A side's figures without its images' paths (a study's trials hold them absolute, an
    exported recipe relative to where it was exported)."""
    predictions = {k: v for k, v in side["predictions"].items() if k != "paths"}
    misses = [{k: v for k, v in m.items() if k != "path"} for m in side["severe_misses"]]
    return side | {"predictions": predictions, "severe_misses": misses}


def _predict_equals_the_evaluation(
    runner: CliRunner, model: list[str], record: dict[str, Any]
) -> None:
    """`drsearch predict` on a folder of the test images (one of them corrupt, one in a
    sub-folder) grades them exactly as the evaluation did: same probabilities, grades and
    calls at the stored operating points; the corrupt image is listed, not fatal."""
    test = record["test"]["predictions"]
    new = Path("new images")
    (new / "clinic b").mkdir(parents=True)
    for i, (image_id, path) in enumerate(zip(test["ids"], test["paths"], strict=True)):
        shutil.copy(path, new / ("clinic b" if i % 2 else "") / f"{image_id}.png")
    (new / "broken.png").write_bytes(b"not a PNG at all")
    result = runner.invoke(cli(), ["predict", *model, str(new), "-o", "out/preds.csv"])
    assert result.exit_code == 0, result.output
    assert f"graded {len(test['ids'])} of {len(test['ids']) + 1} images" in result.output
    assert "1 image could not be read" in result.output and "broken.png" in result.output
    with Path("out/preds.csv").open(newline="") as fh:
        rows = {r["id"].split("/")[-1]: r for r in csv.DictReader(fh)}
    broken = rows["broken"]
    assert broken["error"] == "cannot decode image (not a PNG, JPEG, TIFF or BMP image)"
    assert broken["grade"] == "" and broken["flags"] == ""
    points = record["operating_points"]
    for image_id, pred, probs in zip(test["ids"], test["pred"], test["probs"], strict=True):
        row = rows[image_id]
        assert int(row["grade"]) == pred and row["error"] == ""
        got = [float(row[f"p_grade{g}"]) for g in range(5)]
        assert np.allclose(got, probs, atol=2e-6)
        for name, op in points.items():
            score = sum(probs[op["grade_at_least"] :])
            assert float(row[f"p_{name}"]) == pytest.approx(score, abs=1e-5)
            if abs(score - op["threshold"]) > 1e-5:  # the stored threshold, not the grade
                assert int(row[f"{name}_call"]) == int(score >= op["threshold"])
    # a file predict did not write is never overwritten
    Path("labels.csv").write_text("id_code,diagnosis\nx,1\n")
    refused = runner.invoke(cli(), ["predict", *model, str(new), "-o", "labels.csv"])
    assert refused.exit_code == 2 and "not a predictions file" in refused.output
    assert Path("labels.csv").read_text() == "id_code,diagnosis\nx,1\n"


@pytest.mark.e2e
def test_a_model_that_trained_on_the_test_images_is_refused(held_out_study: Path) -> None:
    # a study whose trials held nothing out: every image was theirs to train or validate on
    recipe = yaml.safe_load(Path("recipe.yaml").read_text())
    recipe["data"]["test_fraction"] = 0.0
    Path("recipe.yaml").write_text(yaml.safe_dump(recipe))
    study = yaml.safe_load(held_out_study.read_text()) | {"name": "all", "budget": {"n_trials": 1}}
    Path("all.yaml").write_text(yaml.safe_dump(study))
    assert CliRunner().invoke(cli(), ["run", "all.yaml", "--quiet"]).exit_code == 0
    result = CliRunner().invoke(cli(), ["evaluate", "all.yaml"])
    assert result.exit_code == 2 and "Traceback" not in result.output
    assert "trial 0 was trained without a held-out test set" in result.output
    assert "set data.test_fraction" in result.output and "run the study again" in result.output
    # the held-out study's trials still evaluate: their own recipe names their test split
    assert CliRunner().invoke(cli(), ["evaluate", str(held_out_study)]).exit_code == 0


@pytest.mark.e2e
def test_a_test_image_that_duplicates_a_training_image_is_caught(held_out_study: Path) -> None:
    """A held-out image whose file is byte for byte a training image's (the same photograph
    filed twice) is counted and said, like validation's; data.drop_val_duplicates drops it."""
    import csv

    from drsearch.config.study import load_study
    from drsearch.data.records import Skipped
    from drsearch.data.sources import load_records
    from drsearch.data.split import held_out_indices
    from drsearch.search.export import select_trial

    loaded = load_study(held_out_study)
    run_dir = Path(select_trial(loaded, "best").user_attrs["run_dir"])
    with (run_dir / "split.csv").open() as fh:
        train_id = next(r["id"] for r in csv.DictReader(fh) if r["split"] == "train")
    d = loaded.recipe.data
    records = load_records(d, Skipped())
    test = records[int(held_out_indices(records, d.test_fraction, d.seed)[0])]
    train = next(r for r in records if r.id == train_id)
    test.path.write_bytes(train.path.read_bytes())
    result = CliRunner().invoke(cli(), ["evaluate", str(held_out_study)])
    assert result.exit_code == 0, result.output
    assert "1 test images have the same file content as a training image" in result.output
    best = json.loads(next(Path("reports/held").glob("evaluation-trial*.json")).read_text())
    assert best["data"]["test_duplicates_of_train"] == 1 and best["data"]["n_test"] == 20
    recipe = yaml.safe_load(Path("recipe.yaml").read_text())
    recipe["data"]["drop_val_duplicates"] = True
    Path("recipe.yaml").write_text(yaml.safe_dump(recipe))
    from drsearch.inspect.evaluate import load_sides

    sides = load_sides(load_study(held_out_study).recipe, [records[i] for i in
                       held_out_indices(records, d.test_fraction, d.seed)])  # fmt: skip
    assert sides.test_duplicates == 1 and len(sides.test.labels) == 19


@pytest.mark.e2e
def test_confirm_retrains_finalists_with_fresh_seeds_and_crowns_the_confirmed_best(
    held_out_study: Path,
) -> None:
    import statistics

    import optuna

    from drsearch.clinical import objective_score

    runner = CliRunner(env={"COLUMNS": "300"})  # the finalists table unwrapped
    result = runner.invoke(
        cli(), ["confirm", str(held_out_study), "--top-k", "2", "--seeds", "3", "--quiet"]
    )
    assert result.exit_code == 0, result.output
    record = json.loads(Path("reports/held/confirm.json").read_text())
    storage = f"sqlite:///{Path('runs/held.db').resolve()}"
    parent = optuna.load_study(study_name="held", storage=storage)
    runs = optuna.load_study(study_name="held-confirm", storage=storage).trials
    assert len(runs) == 6 and all(t.state.name == "COMPLETE" for t in runs)
    assert record["plan"] == {"top_k": 2, "mode": "seeds", "n": 3}
    for finalist in record["finalists"]:
        source = parent.trials[finalist["trial"]]
        mine = [t for t in runs if t.user_attrs["confirm_of"] == finalist["trial"]]
        assert sorted(t.user_attrs["seed"] for t in mine) == [4, 5, 6]  # recipe seed 3 + 1..3
        for t in mine:  # its seed, the finalist's parameters, scored at its best epoch
            config = yaml.safe_load((Path(t.user_attrs["run_dir"]) / "config.yaml").read_text())
            assert config["train"]["seed"] == t.user_attrs["seed"]
            assert config["train"]["select_epoch"] == source.user_attrs["best_epoch"]
            assert t.user_attrs["best_epoch"] == source.user_attrs["best_epoch"]
            assert t.params["optim.lr"] == finalist["params"]["optim.lr"]
        acc = [t.user_attrs["accuracy"] for t in mine]
        assert finalist["seed_spread"]["accuracy"]["mean"] == pytest.approx(statistics.fmean(acc))
        assert finalist["seed_spread"]["accuracy"]["sd"] == pytest.approx(statistics.stdev(acc))
        # the confirmed value: the study's objective on the average seed's counts
        cm = np.mean([t.user_attrs["confusion_matrix"] for t in mine], axis=0)
        again = objective_score(
            "accuracy", [], {"accuracy": statistics.fmean(acc), "confusion_matrix": cm.tolist()}
        )
        assert finalist["confirmed_value"] == pytest.approx(again.value)
        assert finalist["feasible"] == again.feasible
        assert finalist["optimism_gap"] == pytest.approx(source.value - again.value)
        mine.sort(key=lambda t: t.number)
        assert finalist["run_values"] == [t.value for t in mine]
        assert finalist["feasible_runs"] == sum(t.user_attrs["feasible"] for t in mine)
        # the table shows how many seeds were feasible and each seed's value
        values = ", ".join(f"{t.value:.3f}" for t in mine)
        assert f"{finalist['feasible_runs']} of 3" in result.output and values in result.output
    confirmed = [f for f in record["finalists"] if f["feasible"]]
    if confirmed:  # the crowned finalist is the best feasible confirmed value
        best = max(confirmed, key=lambda f: (f["confirmed_value"], -f["trial"]))
        assert record["crowned"] == best["trial"]
        shown = runner.invoke(cli(), ["best", str(held_out_study)])
        assert f"crowned finalist of held: trial {best['trial']}" in shown.output
    # a second call continues the same confirmation study: nothing is retrained
    again = runner.invoke(
        cli(), ["confirm", str(held_out_study), "--top-k", "2", "--seeds", "3", "--quiet"]
    )
    assert again.exit_code == 0, again.output
    assert len(optuna.load_study(study_name="held-confirm", storage=storage).trials) == 6


def test_tta_is_the_mean_of_the_models_outputs_over_flipped_views(tiny_dataset: Path) -> None:
    import torch

    from drsearch.train.batches import Normalizer, Split
    from drsearch.train.model import build_model, normalization
    from drsearch.train.predict import predict
    from tests.conftest import make_recipe

    torch.manual_seed(0)
    model = build_model(make_recipe(tiny_dataset).model).eval()
    images = np.random.default_rng(0).integers(0, 255, (6, 32, 32, 3), dtype=np.uint8)
    split = Split(images, np.arange(6), np.zeros(6, dtype=np.int64))
    got = predict(model, split, 4, ("identity", "hflip", "vflip"))
    x = Normalizer(*normalization(model), torch.device("cpu"))(torch.from_numpy(images))
    with torch.no_grad():  # image x is B x 3 x H x W: width is dim 3, height dim 2
        views = [model(x), model(torch.flip(x, [3])), model(torch.flip(x, [2]))]
    assert np.allclose(got, torch.stack(views).mean(0).numpy(), atol=1e-5)
    assert not np.allclose(got, predict(model, split, 4), atol=1e-4)  # the flips matter


def _untrained_member(recipe, seed: int, label: str):  # type: ignore[no-untyped-def]
    """A randomly initialised model (no pretrained file) of ``recipe``, as a member that held
    out the recipe's test split."""
    import torch

    from drsearch.data.fingerprint import ids_sha256
    from drsearch.data.records import Skipped
    from drsearch.data.sources import load_records
    from drsearch.train.model import build_model
    from drsearch.train.predict import TrainedModel

    d = recipe.data
    loaded = load_records(d, Skipped())
    test = [loaded[i] for i in held_out_indices(loaded, d.test_fraction, d.seed)]
    torch.manual_seed(seed)
    model = build_model(recipe.model, d.image_size)
    fingerprint = {"n_test": len(test), "test_sha256": ids_sha256(r.id for r in test)}
    return TrainedModel(label, recipe, model.state_dict(), fingerprint, trial=seed)


def test_each_ensemble_member_gets_its_own_preprocessing_in_evaluate_and_predict(
    tiny_dataset: Path,
) -> None:
    """Members that differ in preprocessing at one size (plain, Ben Graham) and in size
    (48 px with Ben Graham and a circular mask): the ensemble's probabilities are the mean of
    each member evaluated alone, on validation and test, and predict grades the test images
    exactly so (it refused such an ensemble; evaluate fed every 32 px member the first's)."""
    from drsearch.inspect.evaluate import Options, evaluate
    from drsearch.inspect.predict import Grader, predict_images
    from tests.conftest import make_recipe

    base = {"data__test_fraction": 0.25}
    plain = make_recipe(tiny_dataset, **base)
    ben = make_recipe(tiny_dataset, **base, data__preprocess__ben_graham=True)
    masked = {"data__preprocess__ben_graham": True, "data__preprocess__circular_mask": True}
    big = make_recipe(tiny_dataset, **base, **masked, data__image_size=48)
    members = [_untrained_member(r, i, f"m{i}") for i, r in enumerate((plain, ben, big))]
    options = Options(seed=1)
    ens = evaluate(members, options)
    solo = [evaluate([m], options) for m in members]
    for side in ("validation", "test"):
        mean = np.mean([np.array(s[side]["predictions"]["probs"]) for s in solo], axis=0)
        got = np.array(ens[side]["predictions"]["probs"])
        assert np.abs(got - mean).max() < 2e-6, side
        assert ens[side]["predictions"]["pred"] == got.argmax(1).tolist()
    # the preprocessing matters: the Ben Graham member fed plain images grades otherwise
    misfed = _untrained_member(plain, 1, "m1 on plain images")
    wrong = np.array(evaluate([misfed], options)["test"]["predictions"]["probs"])
    assert np.abs(wrong - np.array(solo[1]["test"]["predictions"]["probs"])).max() > 1e-3
    # predict: the same ensemble, on the test images, gives the evaluation's probabilities
    test = ens["test"]["predictions"]
    images = [(i, Path(p)) for i, p in zip(test["ids"], test["paths"], strict=True)]
    result = predict_images(Grader("mixed", members, ("identity",), {}), images)
    assert result.usable.all() and result.grades.tolist() == test["pred"]
    assert np.abs(result.probs - np.array(test["probs"])).max() < 2e-6


def test_stable_convergence_is_shown_in_points_under_training_not_the_test_set(
    tiny_dataset: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A member whose validation accuracy spans 9 points over its last epochs: the record's
    test checklist does not hold the training criterion; it is apart, shown "9.0 points"
    (the page showed 9.000 beside "< 5 points" in the checklist on the test set)."""
    from drsearch.cli.evaluate import _print
    from drsearch.inspect.evaluate import Options, evaluate
    from drsearch.inspect.report.evaluation import write_evaluation_page
    from tests.conftest import make_recipe

    member = _untrained_member(make_recipe(tiny_dataset, data__test_fraction=0.25), 0, "m")
    member.log = [{"epoch": e, "val": {"accuracy": a}} for e, a in ((1, 0.8), (2, 0.89), (3, 0.85))]
    record = evaluate([member], Options())
    assert "stable convergence" not in [c["name"] for c in record["checklist"]]
    (item,) = record["training_checklist"]
    assert (item["name"], item["shown"], item["result"]) == ("stable convergence", "9.0 points",
                                                             "fail")  # fmt: skip
    write_evaluation_page(record, tmp_path / "e.html", "e")
    page = (tmp_path / "e.html").read_text()
    test_heading = "<h2>Medical-grade checklist on the test set</h2>"
    training_heading = "<h2>Training: judged on the validation epochs, not on the test set</h2>"
    on_test = page.split(test_heading)[1].split("</section>")[0]
    training = page.split(training_heading)[1].split("</section>")[0]
    assert "stable convergence" not in on_test
    row = "<td>stable convergence</td><td>9.0 points</td><td>&lt; 5 points over the last 3 epochs"
    assert row in training
    _print(record, tmp_path / "e.json", tmp_path / "e.html")
    out = capsys.readouterr().out
    assert "checklist on test (95% intervals): " in out and " of 5\n" in out
    line = "stable convergence 9.0 points (< 5 points over the last 3 epochs): fail"
    assert f"training, on validation epochs: {line}" in out


@pytest.mark.e2e
def test_top_k_ensemble_with_tta_is_the_mean_of_its_members_and_exports(
    held_out_study: Path,
) -> None:
    runner = CliRunner()
    ens = runner.invoke(cli(), ["evaluate", str(held_out_study), "--top-k", "2", "--tta"])
    assert ens.exit_code == 0, ens.output
    # keyed by its member trials, not by K
    record = json.loads(Path("reports/held/evaluation-trials0-1-tta.json").read_text())
    assert record["what"]["ensemble"] and record["what"]["views"] == ["identity", "hflip", "vflip"]
    solo = []
    for trial in record["what"]["trials"]:
        one = runner.invoke(
            cli(), ["evaluate", str(held_out_study), "--trial", str(trial), "--tta"]
        )
        assert one.exit_code == 0, one.output
        solo.append(json.loads(Path(f"reports/held/evaluation-trial{trial}-tta.json").read_text()))
    for side in ("test", "validation"):
        mean = np.mean([np.array(s[side]["predictions"]["probs"]) for s in solo], axis=0)
        probs = np.array(record[side]["predictions"]["probs"])
        assert np.allclose(probs, mean, atol=2e-6)
        assert record[side]["predictions"]["pred"] == probs.argmax(1).tolist()
    out = runner.invoke(
        cli(), ["export", str(held_out_study), "--top-k", "2", "--tta", "-o", "ens/top2.yaml"]
    )
    assert out.exit_code == 0, out.output
    again = runner.invoke(cli(), ["evaluate", "ens/top2.yaml"])
    assert again.exit_code == 0, again.output
    exported = json.loads(Path("reports/top2/evaluation-top2.json").read_text())
    assert _without_paths(exported["test"]) == _without_paths(record["test"])
    assert exported["operating_points"]["referable"]["from"] == "the exported file"
    _predict_equals_the_evaluation(runner, ["ens/top2.yaml"], exported)


@pytest.mark.e2e
def test_a_registered_export_is_a_model_version_whose_files_reproduce_its_evaluation(
    held_out_study: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pytest.importorskip("mlflow")
    from mlflow.tracking import MlflowClient

    runner = CliRunner()
    no_store = runner.invoke(
        cli(), ["export", str(held_out_study), "-o", "recipes/r.yaml", "--weights",
                "recipes/r.pt", "--register", "dr-grader"],
    )  # fmt: skip
    assert no_store.exit_code == 2 and "--register needs an MLflow store" in no_store.output
    uri = f"sqlite:///{Path('mlflow.db').resolve()}"
    monkeypatch.setenv("DRSEARCH_MLFLOW_URI", uri)
    assert runner.invoke(cli(), ["evaluate", str(held_out_study), "--temperature"]).exit_code == 0
    for n in (1, 2):  # registered twice: two versions of one model
        out = runner.invoke(
            cli(), ["export", str(held_out_study), "-o", "recipes/r.yaml", "--weights",
                    "recipes/r.pt", "--register", "dr-grader"],
        )  # fmt: skip
        assert out.exit_code == 0, out.output
        assert f"registered as dr-grader version {n} in {uri}, with its held-out evaluation" in (
            out.output
        )
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    versions = client.search_model_versions("name = 'dr-grader'")
    assert sorted(int(v.version) for v in versions) == [1, 2]
    version = client.get_model_version("dr-grader", "2")
    run = client.get_run(version.run_id)
    assert run.data.tags["drsearch.kind"] == "export"
    files = {a.path for a in client.list_artifacts(version.run_id, "model")}
    assert files == {"model/r.yaml", "model/r.pt", "model/evaluation.json"}
    got = Path(client.download_artifacts(version.run_id, "model", "downloaded"))
    registered = json.loads((got / "evaluation.json").read_text())
    pinned = yaml.safe_load((got / "r.yaml").read_text())["pinned"]["evaluation"]
    threshold = registered["operating_points"]["referable"]["threshold"]
    assert pinned["operating_points"]["referable"]["threshold"] == threshold
    # the registered files, evaluated where they were downloaded: the registered figures
    again = runner.invoke(cli(), ["evaluate", str(got / "r.yaml"), "--weights", str(got / "r.pt")])
    assert again.exit_code == 0, again.output
    (second,) = Path("reports").glob("r/evaluation-r.json")
    assert _without_paths(json.loads(second.read_text())["test"]) == _without_paths(
        registered["test"]
    )


def test_fold_models_validate_out_of_fold_and_average_on_test(tiny_dataset: Path) -> None:
    """A study's fold models as one ensemble (its certified result): each validation image is
    predicted by the member that did not train on it (pooled out of fold, never the mean of
    members that trained on it), the test images by the mean of all; members whose validation
    images overlap without being the same are refused."""
    from drsearch.errors import ConfigError
    from drsearch.inspect.evaluate import Options, evaluate
    from tests.conftest import make_recipe

    base = {"data__test_fraction": 0.25, "data__cv_folds": 2}
    folds = [make_recipe(tiny_dataset, **base, data__cv_fold=k) for k in (0, 1)]
    members = [_untrained_member(r, k, f"fold {k}") for k, r in enumerate(folds)]
    options = Options(seed=1)
    ens = evaluate(members, options)
    solo = [evaluate([m], options) for m in members]
    val = ens["validation"]
    assert val["kind"] == "out-of-fold" and solo[0]["validation"]["kind"] == "shared"
    ids = [s["validation"]["predictions"]["ids"] for s in solo]
    assert not set(ids[0]) & set(ids[1])  # the folds are disjoint
    assert val["predictions"]["ids"] == ids[0] + ids[1]
    assert ens["data"]["n_val"] == len(ids[0]) + len(ids[1])
    own = np.concatenate([np.array(s["validation"]["predictions"]["probs"]) for s in solo])
    assert np.abs(np.array(val["predictions"]["probs"]) - own).max() < 2e-6
    mean = np.mean([np.array(s["test"]["predictions"]["probs"]) for s in solo], axis=0)
    assert np.abs(np.array(ens["test"]["predictions"]["probs"]) - mean).max() < 2e-6
    other_split = make_recipe(tiny_dataset, data__test_fraction=0.25, data__val_fraction=0.4)
    with pytest.raises(ConfigError, match="different but overlapping images"):
        evaluate([members[0], _untrained_member(other_split, 2, "other")], options)


def test_an_exported_recipe_with_relative_data_evaluated_elsewhere_says_where_to_run(
    tiny_dataset: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from drsearch.errors import DataError
    from drsearch.inspect.evaluate import Options, evaluate
    from drsearch.train.predict import TrainedModel
    from tests.conftest import make_recipe

    monkeypatch.chdir(tiny_dataset.parent)
    recipe = make_recipe(Path(tiny_dataset.name), data__test_fraction=0.25)
    member = TrainedModel("r.pt", recipe, {}, {"n_test": 1, "test_sha256": "x"})
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    with pytest.raises(DataError, match="is relative to the directory it was exported in, not "):
        evaluate([member], Options(seed=1))
