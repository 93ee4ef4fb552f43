"""Selection that holds up: cross-validation folds, the finalist stage, the crowned best, and
the checks that keep a study's verdicts honest (counts, fixed keys, out-of-sample cuts)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml
from click.testing import CliRunner
from sklearn.metrics import confusion_matrix, recall_score

from drsearch.config.study import load_study
from drsearch.data.records import ImageRecord
from drsearch.data.split import cv_folds, split_indices
from drsearch.errors import ConfigError
from drsearch.search.selection import Ranked, crown, finalists, search_best
from tests.conftest import tiny_recipe_dict, write_tiny_study


def test_finalists_are_the_top_k_by_smooth_value_and_the_crown_is_feasible() -> None:
    trials = [
        Ranked(0, 0.80, True),
        Ranked(1, 0.84, False),  # a fraction of a standard error short: still a finalist
        Ranked(2, 0.82, True),
        Ranked(3, 0.82, True),
        Ranked(4, -1.0, False),
    ]
    assert search_best(trials) == Ranked(2, 0.82, True)  # ties: the earlier trial
    assert [t.number for t in finalists(trials, 3)] == [1, 2, 3]
    confirmed = [Ranked(1, 0.83, True), Ranked(2, 0.79, True), Ranked(3, 0.81, False)]
    assert crown(confirmed) == Ranked(1, 0.83, True)
    assert crown([Ranked(1, 0.9, False)]) is None  # none feasible: no winner


def records(n_patients: int, eyes: int = 2, seed: int = 0) -> list[ImageRecord]:
    rng = np.random.default_rng(seed)
    out = []
    for p in range(n_patients):
        worst = int(rng.choice(5, p=[0.6, 0.1, 0.2, 0.05, 0.05]))
        for e in range(eyes):
            grade = worst if e == 0 else int(rng.integers(0, worst + 1))
            out.append(
                ImageRecord(
                    id=f"p{p}_{e}", path=Path(f"p{p}_{e}.png"), label=grade, patient_id=f"p{p}"
                )  # fmt: skip
            )
    return out


def test_cv_folds_partition_the_non_test_images_by_patient_and_grade() -> None:
    recs = records(200)
    test = split_indices(recs, 0.2, 0, 0.15).test
    rest = np.setdiff1d(np.arange(len(recs)), test)
    seen: list[int] = []
    for k in range(5):
        sides = split_indices(recs, 0.2, 0, 0.15, cv=(5, k))
        assert np.array_equal(sides.test, test)  # the test side never moves
        assert np.array_equal(np.union1d(sides.train, sides.val), rest)
        patients = {recs[i].patient_id for i in sides.val}
        assert not patients & {recs[i].patient_id for i in sides.train}
        assert 0.1 < len(sides.val) / len(rest) < 0.3
        seen += sides.val.tolist()
    assert sorted(seen) == rest.tolist()  # every non-test image is validation exactly once
    labels = np.array([r.label for r in recs])
    per_fold = [np.bincount(labels[f], minlength=5) for f in cv_folds(recs, 5, 0)]
    assert max(c[4] for c in per_fold) - min(c[4] for c in per_fold) <= 4  # stratified


def test_a_grouped_split_honours_its_fraction() -> None:
    """0.4 gives 0.4 of the images (it gave 0.5: round(1 / 0.4) = 2 folds)."""
    recs = records(300)
    for fraction in (0.4, 0.2, 0.15):
        sides = split_indices(recs, fraction, 0)
        assert abs(len(sides.val) / len(recs) - fraction) < 0.02, fraction
        patients = {recs[i].patient_id for i in sides.val}
        assert not patients & {recs[i].patient_id for i in sides.train}


def test_cut_points_are_fitted_out_of_sample() -> None:
    """A regression head's grades on validation come from cuts fitted on the other half; the
    cuts returned (for new images) are fitted on all of it."""
    from drsearch.train.heads import cross_fitted_grades, decode, fit_thresholds, halves, to_grades

    rng = np.random.default_rng(0)
    labels = rng.integers(0, 5, 300)
    score = labels + rng.normal(0, 0.7, 300)
    first = halves(labels)
    assert abs(first.sum() - 150) <= 5
    expected = np.empty(300, dtype=int)
    expected[~first] = to_grades(score[~first], fit_thresholds(score[first], labels[first]))
    expected[first] = to_grades(score[first], fit_thresholds(score[~first], labels[~first]))
    assert np.array_equal(cross_fitted_grades(score, labels), expected)
    _, preds, cuts = decode("regression", score[:, None], labels, None)
    assert np.array_equal(preds, expected) and cuts == fit_thresholds(score, labels)
    _, fixed, same = decode("regression", score[:, None], labels, [0.5, 1.5, 2.5, 3.5])
    assert np.array_equal(fixed, to_grades(score, [0.5, 1.5, 2.5, 3.5])) and same[0] == 0.5


@pytest.mark.parametrize(
    "key", ["data.seed", "data.val_fraction", "data.test_fraction", "data.cv_folds",
            "train.monitor"],
)  # fmt: skip
def test_the_search_space_may_not_touch_what_judges_the_trials(
    tmp_path: Path, tiny_dataset: Path, key: str
) -> None:
    choices = {"data.seed": [0, 1], "data.val_fraction": [0.2, 0.3], "train.monitor": ["qwk"],
               "data.test_fraction": [0.1, 0.2], "data.cv_folds": [3, 5]}[key]  # fmt: skip
    path = write_tiny_study(tmp_path, tiny_dataset, f"{key}: {{type: categorical, "
                            f"choices: {choices}}}\n")  # fmt: skip
    with pytest.raises(ConfigError, match=f"space.yaml: {key}: may not be searched"):
        load_study(path)


def test_too_few_images_to_certify_is_refused_under_lower_bound(
    tmp_path: Path, tiny_dataset: Path
) -> None:
    """4 validation PDR images cannot certify 0.95 at 90% (32 needed with none missed):
    refused before any trial under lower_bound, warned under point; a finalist stage on folds
    pools 16 (enough for 0.75, which needs 5)."""
    from drsearch.search.checks import check_inputs

    space = "optim.lr: {type: float, low: 1.0e-3, high: 1.0e-2, log: true}\n"
    strict = {"metric": "accuracy", "constraints": [{"metric": "referred_pdr", "min": 0.95}]}
    path = write_tiny_study(tmp_path, tiny_dataset, space, objective=strict)
    with pytest.raises(ConfigError) as err:
        check_inputs(load_study(path))
    assert "referred_pdr >= 0.95 cannot be certified at 90% confidence from 4 validation " in (
        str(err.value)
    )
    assert "needs >= 32 with none missed, >= 66 to allow one miss" in str(err.value)
    point = write_tiny_study(tmp_path, tiny_dataset, space, objective=strict | {
        "constraints_on": "point"})  # fmt: skip
    assert "a pass on so few images is luck" in check_inputs(load_study(point))[0]
    loose = {"metric": "accuracy", "constraints": [{"metric": "referred_pdr", "min": 0.75}]}
    folds = write_tiny_study(tmp_path, tiny_dataset, space, objective=loose,
                             finalists={"top_k": 1, "folds": 4})  # fmt: skip
    warned = check_inputs(load_study(folds))
    assert "its finalists are judged on all 16 images of the 4 folds" in warned[0]
    # folds pool every non-test image already: the fixes say what can add images, not folds
    pooled = write_tiny_study(tmp_path, tiny_dataset, space, objective=strict,
                              finalists={"top_k": 1, "folds": 4})  # fmt: skip
    with pytest.raises(ConfigError) as err:
        check_inputs(load_study(pooled))
    assert "add images of grade 4, hold out fewer for testing" in str(err.value)
    assert "folds:" not in str(err.value).split(";", 1)[1]


@pytest.mark.e2e
def test_a_finalist_stage_on_folds_crowns_the_confirmed_best_everywhere(
    tmp_path: Path, tiny_dataset: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A study with a finalist stage run from its own folder with relative paths: the
    finalists are retrained on every fold, scored on the pooled out-of-fold predictions
    (checked against scikit-learn on the concatenated files), and best, export and evaluate
    all name the crowned finalist; --trial search-best names the search's own."""
    import optuna

    from drsearch.cli import cli

    shutil.copytree(tiny_dataset, tmp_path / "data")
    monkeypatch.chdir(tmp_path)
    recipe = tiny_recipe_dict(Path("data"), **{"data.test_fraction": 0.2, "train.epochs": 5})
    Path("recipe.yaml").write_text(yaml.safe_dump(recipe))
    Path("space.yaml").write_text("optim.lr: {type: float, low: 1.0e-3, high: 1.0e-2, log: true}\n")
    study = {
        "name": "fin", "recipe": "recipe.yaml", "search_space": "space.yaml",
        "objective": {"metric": "accuracy", "constraints": []},
        "pruner": {"enabled": False}, "sampler": {"name": "random", "seed": 0},
        "budget": {"n_trials": 3}, "finalists": {"top_k": 2, "folds": 2},
        "resources": {"cpus_per_trial": 1, "max_concurrent": 1}, "executor": "local",
        "run_root": "runs",
    }  # fmt: skip
    Path("fin.yaml").write_text(yaml.safe_dump(study))
    runner = CliRunner(env={"COLUMNS": "200"})  # the finalists table unwrapped
    result = runner.invoke(cli, ["run", "fin.yaml", "--quiet"])
    assert result.exit_code == 0, result.output
    assert "finalist stage (top 2 x 2 folds)" in result.output
    storage = f"sqlite:///{Path('runs/fin.db').resolve()}"
    parent = optuna.load_study(study_name="fin", storage=storage)
    record = parent.user_attrs["drsearch:finalists"]
    runs = optuna.load_study(study_name="fin-confirm", storage=storage).trials
    assert len(runs) == 4 and all(t.state.name == "COMPLETE" for t in runs)
    n_rest = 65  # 80 images, 3 of each grade held out
    for e in record["finalists"]:
        mine = [t for t in runs if t.user_attrs["confirm_of"] == e["trial"]]
        assert sorted(t.user_attrs["fold"] for t in mine) == [0, 1]
        assert e["evidence"] == f"{n_rest} pooled out-of-fold images (2 folds)"
        # the pooled metrics against scikit-learn on the concatenated predictions
        ids, labels, preds = [], [], []
        for t in mine:
            table = np.genfromtxt(Path(t.user_attrs["run_dir"]) / "predictions.csv",
                                  delimiter=",", names=True, dtype=None, encoding=None)  # fmt: skip
            ids += table["id"].tolist()
            labels += table["label"].tolist()
            preds += table["pred"].tolist()
            config = yaml.safe_load((Path(t.user_attrs["run_dir"]) / "config.yaml").read_text())
            assert config["data"]["cv_fold"] == t.user_attrs["fold"]
            assert config["train"]["select_epoch"] == e["select_epoch"]
        assert len(set(ids)) == n_rest  # each non-test image once
        assert e["confirmed_primary"] == pytest.approx(np.mean(np.equal(labels, preds)))
        assert e["metrics"]["balanced_accuracy"] == pytest.approx(
            recall_score(labels, preds, labels=sorted(set(labels)), average="macro")
        )
        cm = confusion_matrix(labels, preds, labels=range(5))
        trivial = cm.sum(1).max() / cm.sum()
        assert e["feasible"] == (e["confirmed_primary"] > trivial)
        assert e["optimism_gap"] == pytest.approx(e["search_value"] - e["confirmed_value"])
    crowned = record["crowned"]
    feasible = [e for e in record["finalists"] if e["feasible"]]
    assert crowned == (max(feasible, key=lambda e: e["confirmed_value"])["trial"]
                       if feasible else None)  # fmt: skip
    assert "optimism gap" in result.output
    assert crowned is not None  # the tiny models beat the trivial model on the pooled folds
    assert f"study best: trial {crowned} (confirmed)" in result.output
    shown = runner.invoke(cli, ["best", "fin.yaml"])
    assert f"crowned finalist of fin: trial {crowned}" in shown.output
    # what ships is what was certified: the crowned finalist's fold models, one ensemble
    assert "drsearch export fin.yaml -o recipes/fin-best.yaml  " in result.output
    one = runner.invoke(cli, ["export", "fin.yaml", "-o", "best.yaml", "--weights", "best.pt"])
    assert one.exit_code == 2 and "drop --weights" in one.output, one.output
    assert not Path("best.yaml").exists()
    # paths export cannot write an ensemble to: refused in one line, nothing written
    Path("taken").write_text("a file where the members' folder would go\n")
    for bad, why in (("nosuffix", "ends in .yaml"), ("taken.yaml", "is a file")):
        refused = runner.invoke(cli, ["export", "fin.yaml", "-o", bad])
        assert refused.exit_code == 2 and why in refused.output, refused.output
        assert refused.output.count("\n") == 1
    assert not Path("nosuffix").exists() and Path("taken").is_file()
    out = runner.invoke(cli, ["export", "fin.yaml", "-o", "best.yaml"])
    assert out.exit_code == 0, out.output
    check_certified_export(Path("best.yaml"), record, runs, crowned, n_rest)
    # an ensemble file where a recipe or a study is wanted: what it is and what to do
    for command in (["train", "best.yaml"], ["check", "best.yaml"]):
        wrong = runner.invoke(cli, command)
        assert wrong.exit_code == 2 and "this is an ensemble file" in wrong.output, wrong.output
    assert "drsearch train best/finalist" in runner.invoke(cli, ["train", "best.yaml"]).output
    ev = runner.invoke(cli, ["evaluate", "fin.yaml"])
    assert ev.exit_code == 0, ev.output
    evaluation = json.loads(Path(f"reports/fin/evaluation-finalist{crowned}-folds.json")
                            .read_text())  # fmt: skip
    # the certified result is evaluated: both fold models, validated out of fold (each image
    # by the model that did not train on it), with the certificate beside the test figures
    assert evaluation["what"]["trials"] == [crowned, crowned] and evaluation["what"]["ensemble"]
    assert evaluation["validation"]["kind"] == "out-of-fold"
    assert evaluation["data"]["n_val"] == n_rest
    cert = evaluation["certificate"]
    assert cert["finalist"] == crowned and cert["n_images"] == n_rest
    test_acc = evaluation["test"]["metrics"]["accuracy"]
    (row,) = [r for r in cert["held"] if r["figure"] == "accuracy"]
    assert row == {"figure": "accuracy", "certified": cert["metrics"]["accuracy"],
                   "bound": cert["accuracy_interval"][0], "test": test_acc,
                   "held": test_acc >= cert["accuracy_interval"][0]}  # fmt: skip
    assert f"certified ({n_rest} pooled out-of-fold images (2 folds); finalist {crowned}'s" in (
        ev.output
    )
    # the exported ensemble evaluates to the same figures, and carries the same certificate
    again_ens = runner.invoke(cli, ["evaluate", "best.yaml"])
    assert again_ens.exit_code == 0, again_ens.output
    exported = json.loads(Path("reports/best/evaluation-best.json").read_text())
    assert exported["test"]["metrics"] == evaluation["test"]["metrics"]
    assert exported["certificate"] == cert
    # with temperatures fitted, the export carries each member's own (they all confirm one
    # trial: keyed by trial, the first member got none and the second the last one's)
    fitted = runner.invoke(cli, ["evaluate", "fin.yaml", "--temperature", "--out", "t"])
    assert fitted.exit_code == 0, fitted.output
    assert runner.invoke(cli, ["export", "fin.yaml", "-o", "temp.yaml"]).exit_code == 0
    shipped = runner.invoke(cli, ["evaluate", "temp.yaml", "--out", "t2"])
    assert shipped.exit_code == 0, shipped.output
    a = json.loads(Path(f"t/evaluation-finalist{crowned}-folds.json").read_text())
    b = json.loads(Path("t2/evaluation-temp.json").read_text())
    assert [m["temperature"] for m in b["members"]] == [m["temperature"] for m in a["members"]]
    assert b["test"]["metrics"] == a["test"]["metrics"]
    assert b["test"]["predictions"]["probs"] == a["test"]["predictions"]["probs"]
    # a methods paragraph a journal asks for, written from the study's own records
    methods = evaluation["methods"]
    assert f"held-out test set ({evaluation['data']['n_test']} images" in methods
    assert "budget of 3 configurations (3 trained to the end, 0 stopped early" in methods
    assert "The top 2 configurations by validation score were retrained on each of 2 folds" in (
        methods
    )
    assert f"(trial {crowned}), and what ships is exactly the models it was confirmed" in (methods)
    assert f"certified result, configuration {crowned}'s 2 fold models" in methods
    assert "pooled out-of-fold validation predictions" in methods
    assert "evaluate 1 candidate (this one)" in methods
    assert "Methods</h2>" in Path(f"reports/fin/evaluation-finalist{crowned}-folds.html"
                                  ).read_text()  # fmt: skip
    other = next(e["trial"] for e in record["finalists"] if e["trial"] != crowned)
    again = runner.invoke(cli, ["evaluate", "fin.yaml", "--trial", str(other)])
    assert again.exit_code == 0, again.output
    # a second candidate on the test set: said, and recorded with the study
    assert "the held-out test set has now measured 2 candidates" in again.output
    raw = runner.invoke(cli, ["export", "fin.yaml", "--trial", "search-best", "-o", "raw.yaml"])
    assert raw.exit_code == 0, raw.output
    assert (
        yaml.safe_load(Path("raw.yaml").read_text())["pinned"]["provenance"]["trial"]
        == (record["search_best"])
    )
    log = optuna.load_study(study_name="fin", storage=storage).user_attrs[
        "drsearch:test_evaluations"
    ]
    assert [e["trials"] for e in log] == [[crowned, crowned], [crowned, crowned], [other]]
    # a finalist stage that named no winner: the commands that take the study's best say so in
    # one line and exit 3 (an outcome, not bad input: `make demo` goes on), nothing written
    parent = optuna.load_study(study_name="fin", storage=storage)
    parent.set_user_attr("drsearch:finalists", record | {"crowned": None})
    for command in (["evaluate", "fin.yaml"], ["export", "fin.yaml", "-o", "none.yaml"]):
        refused = runner.invoke(cli, command)
        assert refused.exit_code == 3, refused.output
        assert refused.output.count("\n") == 1 and "names no winner" in refused.output
        assert "no finalist meets the constraints on its confirmation" in refused.output
    assert not Path("none.yaml").exists()
    assert runner.invoke(cli, ["evaluate", "fin.yaml", "--trial", "no"]).exit_code == 2


def test_an_interrupted_confirmation_run_is_queued_again_never_resampled(
    tmp_path: Path, tiny_dataset: Path
) -> None:
    """A confirmation run cut short (Ctrl-C, a killed runner) is queued again with its own fold
    and parameters; the budget never leaves room for a sampled one; a failed run is queued
    again only with --retry-failed."""
    import optuna
    from optuna.distributions import FloatDistribution

    from drsearch.search.selection import confirmation_study, plan_of

    space = "optim.lr: {type: float, low: 1.0e-3, high: 1.0e-2, log: true}\n"
    path = write_tiny_study(tmp_path, tiny_dataset, space, finalists={"top_k": 1, "folds": 2})
    loaded = load_study(path)
    loaded.config.run_root.mkdir(parents=True)
    storage = loaded.config.storage_url()
    parent = optuna.create_study(study_name="tiny", storage=storage, direction="maximize")
    for number, value in enumerate((0.5, 0.7)):
        parent.add_trial(
            optuna.trial.create_trial(
                params={"optim.lr": 0.002 + number / 1000},
                distributions={"optim.lr": FloatDistribution(1e-3, 1e-2, log=True)},
                value=value,
                user_attrs={"feasible": True, "best_epoch": 2, "objective_primary": value},
            )
        )
    plan = plan_of(loaded)
    companion = confirmation_study(loaded, plan)
    assert companion.config.budget.n_trials == 2
    runs = optuna.load_study(study_name="tiny-confirm", storage=storage)
    waiting = runs.get_trials(states=(optuna.trial.TrialState.WAITING,))
    assert sorted(t.user_attrs["fold"] for t in waiting) == [0, 1]
    fixed = [t.system_attrs["fixed_params"] for t in waiting]  # what each run will use
    assert all(t.user_attrs["confirm_of"] == 1 for t in waiting)
    assert all(f["optim.lr"] == 0.003 and f["train.select_epoch"] == 2 for f in fixed)
    # the fold-1 run is cut short; the fold-0 run fails by its own fault
    for trial, reason in ((runs.ask(), "boom"), (runs.ask(), "interrupted")):
        trial.set_user_attr("fail_reason", reason)
        runs.tell(trial, state=optuna.trial.TrialState.FAIL)
    again = confirmation_study(loaded, plan)
    queued = runs.get_trials(states=(optuna.trial.TrialState.WAITING,))
    interrupted = next(t for t in runs.trials if t.user_attrs.get("fail_reason") == "interrupted")
    assert [t.user_attrs["fold"] for t in queued] == [interrupted.user_attrs["fold"]]
    assert queued[0].system_attrs["fixed_params"]["data.cv_fold"] == interrupted.user_attrs["fold"]
    assert again.config.budget.n_trials == 2  # the failed run and the queued one
    retried = confirmation_study(loaded, plan, retry_failed=True)
    queued = runs.get_trials(states=(optuna.trial.TrialState.WAITING,))
    assert sorted(t.user_attrs["fold"] for t in queued) == [0, 1]
    assert retried.config.budget.n_trials == 2


def test_select_epoch_keeps_that_epoch_and_stops_there(tmp_path: Path, tiny_dataset: Path) -> None:
    """A finalist's run is scored at the epoch its search trial chose: that epoch's weights
    and predictions are its result (not an epoch chosen again on its own validation), the
    schedule is the full run's, and training stops there (a resume past it trains nothing)."""
    from drsearch.train import fit
    from tests.conftest import make_recipe

    full = fit(make_recipe(tiny_dataset, train__epochs=4), run_dir=tmp_path / "full")
    picked = make_recipe(tiny_dataset, train__epochs=4, train__select_epoch=2)
    result = fit(picked, run_dir=tmp_path / "picked")
    assert result.stopped == "select_epoch" and result.epochs_completed == 2
    assert result.best_epoch == 2
    # the first two epochs are the full run's, LR included (the schedule is planned for 4)
    assert [r["lr"] for r in result.history] == [r["lr"] for r in full.history[:2]]
    assert result.best == full.history[1]["val"]
    again = fit(picked, run_dir=tmp_path / "picked", resume=True)
    assert again.epochs_completed == 2 and again.best_epoch == 2


def test_one_best_trial_rule_everywhere_and_a_zero_value_is_a_value() -> None:
    """run's summary, best/export (selection), the report and `trials` name the same trial;
    a value of 0.0 ranks above a negative one (not as -inf); none feasible, none is named
    best, and the closest is shown as such."""
    import optuna

    from drsearch.inspect.report.records import _best, _history, _row
    from drsearch.inspect.trials import best_trial
    from drsearch.ranking import closest, ranked_trials
    from drsearch.ranking import search_best as rule
    from drsearch.search.selection import closest_infeasible, search_best_trial
    from drsearch.search.verdict import study_best

    def study_of(values: list[tuple[float, bool]]) -> optuna.Study:
        study = optuna.create_study(direction="maximize")
        for value, feasible in values:
            study.add_trial(
                optuna.trial.create_trial(value=value, user_attrs={"feasible": feasible})
            )
        return study

    study = study_of([(-0.5, True), (0.0, True), (0.3, False), (0.0, True)])
    rows = [_row(t) for t in study.get_trials()]
    complete = [r for r in rows if r.value is not None]
    assert search_best_trial(study).number == 1  # 0.0 beats -0.5; the earlier of two 0.0s
    assert study_best(study).trial.number == best_trial(study).number == 1
    row, feasible = _best(study, complete, None)
    assert (row.number, feasible) == (1, True)
    assert [h[2] for h in _history(complete)] == [-0.5, 0.0, 0.3, 0.3]  # best so far, any
    assert rule(ranked_trials(study.get_trials())).number == 1

    none = study_of([(0.2, False), (0.4, False)])
    assert search_best_trial(none) is None and study_best(none).trial is None
    assert best_trial(none) is None
    assert closest_infeasible(none).number == 1 == closest(ranked_trials(none.trials)).number
    row, feasible = _best(none, [_row(t) for t in none.trials], None)
    assert (row.number, feasible) == (1, False)  # the report shows it as infeasible


def _parent_with_trials(tmp_path: Path, tiny_dataset: Path, **study: Any) -> Any:
    """A tiny study file whose study holds two complete trials (trial 1 the better)."""
    import optuna
    from optuna.distributions import FloatDistribution

    space = "optim.lr: {type: float, low: 1.0e-3, high: 1.0e-2, log: true}\n"
    loaded = load_study(write_tiny_study(tmp_path, tiny_dataset, space, **study))
    loaded.config.run_root.mkdir(parents=True)
    parent = optuna.create_study(
        study_name="tiny", storage=loaded.config.storage_url(), direction="maximize"
    )
    for number, value in enumerate((0.5, 0.7)):
        parent.add_trial(
            optuna.trial.create_trial(
                params={"optim.lr": 0.002 + number / 1000},
                distributions={"optim.lr": FloatDistribution(1e-3, 1e-2, log=True)},
                value=value,
                user_attrs={"feasible": True, "best_epoch": 1, "objective_primary": value},
            )
        )
    return loaded


def test_a_killed_runners_confirmation_run_is_taken_over_never_sampled(
    tmp_path: Path, tiny_dataset: Path
) -> None:
    """Two runners share a finalist stage; one is killed holding a run. The survivor takes
    that run over with its own finalist and fold (re-queued, ``retry_of`` naming it), and a
    runner that finds the queue empty starts nothing: no sampled confirmation trial, ever."""
    from drsearch.search.runners import _open  # as run_study opens a study's store
    from drsearch.search.selection import confirmation_study, plan_of
    from drsearch.search.trial import Outcome

    loaded = _parent_with_trials(tmp_path, tiny_dataset, finalists={"top_k": 1, "folds": 2})
    companion = confirmation_study(loaded, plan_of(loaded))
    a, b = _open(companion), _open(companion)
    lost, kept = a.claim(), b.claim()
    assert lost is not None and kept is not None
    a.close()  # runner a is gone (its process would be dead; here its runner is closed)
    done = Outcome("COMPLETE", 0.6, {"feasible": True})
    b.finish(kept._trial_id, done, {})
    again = b.claim()
    assert again is not None
    frozen = b.study.trials
    assert frozen[lost.number].state.name == "FAIL"
    assert frozen[lost.number].user_attrs["fail_reason"] == "interrupted"
    taken = frozen[again.number]
    assert taken.user_attrs["retry_of"] == lost.number
    for key in ("confirm_of", "fold", "select_epoch"):
        assert taken.user_attrs[key] == frozen[lost.number].user_attrs[key]
    assert taken.system_attrs["fixed_params"] == frozen[lost.number].system_attrs["fixed_params"]
    b.finish(again._trial_id, done, {})
    assert b.claim() is None  # the plan is done: nothing sampled in its place
    runs = b.study.trials
    assert len(runs) == 3 and all("confirm_of" in t.user_attrs for t in runs)
    assert sorted(t.user_attrs["fold"] for t in runs if t.state.name == "COMPLETE") == [0, 1]
    # a finalist stage's store whose queue is empty never samples, whatever its budget says
    c = _open(companion)
    c.set_budget(10)
    assert c.claim() is None and len(c.study.trials) == 3
    b.close()
    c.close()


@pytest.mark.e2e
def test_a_finalist_stage_of_a_one_epoch_recipe(
    tmp_path: Path, tiny_dataset: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A recipe of one epoch: its finalists are retrained at epoch 1 (``select_epoch``'s range
    is 1..1), and the stage completes."""
    from drsearch.cli import cli

    monkeypatch.chdir(tmp_path)  # its record goes to reports/ under the current directory

    space = "optim.lr: {type: float, low: 1.0e-3, high: 1.0e-2, log: true}\n"
    path = write_tiny_study(
        tmp_path, tiny_dataset, space,
        recipe_overrides={"train.epochs": 1, "schedule.warmup_epochs": 0},
        finalists={"top_k": 1, "seeds": 2}, pruner={"enabled": False},
    )  # fmt: skip
    result = CliRunner().invoke(cli, ["run", str(path), "--quiet"])
    assert result.exit_code == 0, result.output
    import optuna

    storage = load_study(path).config.storage_url()
    runs = optuna.load_study(study_name="tiny-confirm", storage=storage).trials
    assert [t.state.name for t in runs] == ["COMPLETE", "COMPLETE"]
    assert {t.params["train.select_epoch"] for t in runs} == {1}
    assert "finalist stage (top 1 x 2 seeds)" in result.output


@pytest.mark.e2e
def test_a_stage_that_names_no_winner_says_why_and_what_to_try_everywhere(
    tmp_path: Path, tiny_dataset: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No finalist can hold up (a minimum no tiny model meets): `run` leaves `evaluate` and
    `export` out of its next steps and says why and what to try; `best` shows the finalists
    and the same, and exits 3 (an outcome, as export's and evaluate's), not 2."""
    from drsearch.cli import cli

    monkeypatch.chdir(tmp_path)
    space = "optim.lr: {type: float, low: 1.0e-3, high: 1.0e-2, log: true}\n"
    path = write_tiny_study(
        tmp_path, tiny_dataset, space, budget={"n_trials": 2}, pruner={"enabled": False},
        recipe_overrides={"train.epochs": 1, "schedule.warmup_epochs": 0},
        finalists={"top_k": 1, "seeds": 2},
        objective={"metric": "accuracy", "constraints_on": "point",
                   "constraints": [{"metric": "accuracy", "min": 0.999}]},
    )  # fmt: skip
    runner = CliRunner()
    out = runner.invoke(cli, ["run", path.name, "--quiet"])
    assert out.exit_code == 0, out.output
    steps = out.output.split("next steps:")[1]
    assert "drsearch export" not in steps.split("what to try:")[0]
    assert "drsearch evaluate" not in steps
    assert "no winner: no finalist meets the constraints on its confirmation" in steps
    assert "closest: trial" in steps and "accuracy" in steps
    assert "more validation evidence" in steps
    assert f"drsearch export {path.name} --trial search-best" not in steps  # none feasible
    best = runner.invoke(cli, ["best", path.name])
    assert best.exit_code == 3, best.output
    assert "Finalists: top 1" in best.output and "what to try:" in best.output
    assert best.output.strip().splitlines()[-1].startswith("Error: tiny.yaml: study 'tiny' "
                                                           "names no winner")  # fmt: skip
    export = runner.invoke(cli, ["export", path.name, "-o", "x.yaml"])
    assert export.exit_code == 3 and not Path("x.yaml").exists()


def check_certified_export(
    path: Path, record: dict[str, Any], runs: list[Any], crowned: int, n: int
) -> None:
    """An exported certified result: one member per fold of the crowned finalist, each its
    confirmation run's recipe (its fold) and best-epoch weights, and the certificate of the
    finalist stage's record (its accuracy interval against the Wilson formula long-hand)."""
    import torch

    from drsearch.config.ensemble import load_ensemble

    entry = next(e for e in record["finalists"] if e["trial"] == crowned)
    mine = sorted((t for t in runs if t.user_attrs["confirm_of"] == crowned),
                  key=lambda t: t.user_attrs["fold"])  # fmt: skip
    body = yaml.safe_load(path.read_text())["ensemble"]
    folder = path.with_suffix("").name
    assert [m["recipe"] for m in body["members"]] == [
        f"{folder}/finalist{crowned}-fold{t.user_attrs['fold']}.yaml" for t in mine
    ]
    ensemble = load_ensemble(path)
    for run, member in zip(mine, ensemble.members, strict=True):
        pinned = yaml.safe_load(member.recipe.read_text())
        prov = pinned["pinned"]["provenance"]
        assert (prov["study"], prov["trial"]) == ("fin-confirm", run.number)
        assert (prov["confirm_of"], prov["fold"]) == (crowned, run.user_attrs["fold"])
        assert pinned["data"]["cv_fold"] == run.user_attrs["fold"]
        assert pinned["train"]["select_epoch"] == entry["select_epoch"]
        shipped = torch.load(member.weights, weights_only=True)
        source = torch.load(Path(run.user_attrs["run_dir"]) / "checkpoints" / "best.pt",
                            weights_only=True)  # fmt: skip
        assert shipped["trial"] == run.number and shipped["epoch"] == entry["select_epoch"]
        assert shipped["state_dict"].keys() == source["model"].keys()
        assert all(torch.equal(shipped["state_dict"][k], v) for k, v in source["model"].items())
    cert = body["certificate"]
    assert (cert["finalist"], cert["mode"], cert["runs"]) == (crowned, "folds", entry["runs"])
    assert cert["n_images"] == n and cert["confirmed_primary"] == entry["confirmed_primary"]
    p, z = entry["metrics"]["accuracy"], 1.959963984540054
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z / (1 + z * z / n) * np.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    assert cert["accuracy_interval"] == pytest.approx([centre - half, centre + half])
