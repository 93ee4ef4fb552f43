"""Studies the way users run them: relative paths from another directory, several runners at
once, kills at the worst moments, continuing yesterday's study, and re-running failures.

Most of these run ``drsearch run`` as a separate process, as a user would.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import optuna
import pytest
import yaml
from click.testing import CliRunner
from optuna.trial import TrialState

from drsearch.cli import cli
from drsearch.config import load_recipe
from drsearch.config.study import load_study
from drsearch.data.synth import write_synthetic_dataset
from drsearch.search.database import make_storage
from drsearch.search.objective import score
from drsearch.search.runners import run_study
from drsearch.train import fit
from tests.conftest import peek_trials, tiny_recipe_dict, write_tiny_study

pytestmark = pytest.mark.e2e

LR_SPACE = "optim.lr: {type: float, low: 1.0e-4, high: 1.0e-2, log: true}\n"
TIMING = ("epoch_seconds", "train_seconds")


def drsearch(*args: str, cwd: Path | None = None, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "drsearch.cli", *args],
        cwd=cwd,
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=600,
    )


def drsearch_here(*args: str) -> SimpleNamespace:
    """The same command in this process (for tests that need no kill: faster)."""
    result = CliRunner().invoke(cli, list(args))
    if result.exception and not isinstance(result.exception, SystemExit):
        raise result.exception
    return SimpleNamespace(returncode=result.exit_code, stdout=result.stdout, stderr=result.stderr)


def study_trials(path: Path) -> list[optuna.trial.FrozenTrial]:
    cfg = load_study(path).config
    study = optuna.load_study(study_name=cfg.name, storage=make_storage(cfg.storage_url()))
    return study.get_trials()


def epoch_log(run_dir: Path) -> list[dict[str, Any]]:
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return [{k: v for k, v in json.loads(x).items() if k not in TIMING} for x in lines]


def uninterrupted(run_dir: Path, out: Path) -> list[dict[str, Any]]:
    """The log of the trial's own recipe (its config.yaml) trained in one go."""
    fit(load_recipe(run_dir / "config.yaml"), run_dir=out)
    return epoch_log(out)


def assert_settled(trials: list[optuna.trial.FrozenTrial], counted: int) -> None:
    """No trial left RUNNING, and exactly ``counted`` trials use up the budget."""
    assert not [t.number for t in trials if t.state == TrialState.RUNNING]
    retried = {t.user_attrs["retry_of"] for t in trials if "retry_of" in t.user_attrs}
    spent = [
        t
        for t in trials
        if t.state in (TrialState.COMPLETE, TrialState.PRUNED)
        or (
            t.state == TrialState.FAIL
            and t.user_attrs.get("fail_reason") != "interrupted"
            and t.number not in retried
        )
    ]
    assert len(spent) == counted, [(t.number, t.state.name) for t in trials]


# -- defect 1: relative paths, from another working directory, under Ray -------------------
def test_relative_paths_from_another_directory_under_ray(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The study file sits in studies/, the user runs from the project folder, the recipe
    says data/aptos and data/synth: every trial reads those folders, nothing is generated
    twice, under Ray's per-trial working directories."""
    project = tmp_path / "project"
    for folder in ("studies", "recipes", "search_spaces"):
        (project / folder).mkdir(parents=True)
    write_synthetic_dataset(project / "data" / "aptos", n=60, size=48, seed=2)
    recipe = tiny_recipe_dict(Path("unused"), **{"train.epochs": 2, "train.threads": 1})
    recipe["data"] = {
        "image_size": 32,
        "val_fraction": 0.3,
        "sources": [
            {"kind": "aptos2019", "root": "data/aptos", "use": "split"},
            {"kind": "synthetic", "root": "data/synth", "use": "train"},
        ],
        "synthetic": {"n": 30, "size": 48, "seed": 5},
    }
    (project / "recipes" / "r.yaml").write_text(yaml.safe_dump(recipe))
    (project / "search_spaces" / "s.yaml").write_text(LR_SPACE)
    study = {
        "name": "rel",
        "recipe": "recipes/r.yaml",
        "search_space": "search_spaces/s.yaml",
        "objective": {"metric": "accuracy", "constraints": []},
        "pruner": {"enabled": False},
        "sampler": {"name": "random", "seed": 0},
        "budget": {"n_trials": 2},
        "resources": {"cpus_per_trial": 1, "max_concurrent": 2},
        "executor": "ray",
        "run_root": "runs",
    }
    (project / "studies" / "rel.yaml").write_text(yaml.safe_dump(study))
    out = drsearch("run", "studies/rel.yaml", "--quiet", cwd=project)
    assert out.returncode == 0, out.stdout + out.stderr[-3000:]
    assert "2/2 trials counted - 2 complete" in out.stdout
    monkeypatch.chdir(project)  # the study's relative paths are read from here, as the CLI did
    trials = study_trials(Path("studies/rel.yaml"))
    assert [t.state for t in trials] == [TrialState.COMPLETE] * 2
    for t in trials:
        run = json.loads((Path(t.user_attrs["run_dir"]) / "run.json").read_text())
        assert run["data_roots"] == [str(project / "data/aptos"), str(project / "data/synth")]
        assert run["n_train"] + run["n_val"] == 90
    generated = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("train.csv"))
    assert generated == [Path("project/data/aptos/train.csv"), Path("project/data/synth/train.csv")]


def test_missing_data_is_named_with_the_directory_it_was_read_from(tmp_path: Path) -> None:
    path = write_tiny_study(tmp_path, Path("data/nowhere"), LR_SPACE)
    out = drsearch("run", str(path), "--quiet", cwd=tmp_path)
    assert out.returncode == 2
    # (the tiny study's first rung falls in its 1-epoch warmup: a warning line comes first)
    (line,) = [x for x in out.stderr.strip().splitlines() if not x.startswith("Warning:")]
    assert line.startswith("Error:") and "data.root: data/nowhere not found" in line
    assert f"read from the directory drsearch runs in, {tmp_path}" in line
    # what the folder must hold, where it comes from, and how to try the study without it
    assert "train.csv (id_code,diagnosis) and train_images/<id_code>.png" in line
    assert "aptos2019-blindness-detection" in line
    assert f"drsearch run {path} --smoke" in line
    assert not (tmp_path / "runs").exists()  # stopped before any trial


def test_check_lists_every_problem_and_where_a_relative_path_is(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    project = tmp_path / "project"
    (project / "studies").mkdir(parents=True)
    (project / "recipes").mkdir()
    (project / "recipes" / "r.yaml").write_text(
        yaml.safe_dump(tiny_recipe_dict(Path("data/nowhere")))
    )
    (project / "space.yaml").write_text(LR_SPACE)
    (project / "runs").write_text("a file where the run root should be")
    study = {
        "name": "two", "recipe": "recipes/r.yaml", "search_space": "space.yaml",
        "objective": {"metric": "accuracy", "constraints": []}, "run_root": "runs",
        "executor": "ray", "resources": {"cpus_per_trial": 512, "max_concurrent": 1},
    }  # fmt: skip
    (project / "studies" / "two.yaml").write_text(yaml.safe_dump(study))
    # from the project: every problem at once, each naming its key
    monkeypatch.chdir(project)
    result = CliRunner().invoke(cli, ["check", "studies/two.yaml"])
    monkeypatch.chdir(tmp_path)
    elsewhere = CliRunner().invoke(cli, ["check", "project/studies/two.yaml"])
    assert result.exit_code == 2, result.output
    lines = [x for x in result.output.strip().splitlines() if not x.startswith("Warning:")]
    assert lines[0] == "Error: 3 problems to fix before this study can run:"
    assert lines[1].startswith("  1. studies/two.yaml: run_root:") and "is a file" in lines[1]
    assert lines[2].startswith("  2. studies/two.yaml: data.root: data/nowhere not found")
    assert lines[3].startswith("  3. studies/two.yaml: resources.cpus_per_trial: 512 per trial")
    # from another folder: the recipe is not found there, and drsearch says where it is
    assert elsewhere.exit_code == 2
    assert elsewhere.output.strip().splitlines()[-1] == (
        "Error: project/studies/two.yaml: recipe: recipes/r.yaml not found (relative paths are "
        f"read from the directory drsearch runs in, {tmp_path}; it is in {project}: cd "
        f"{project} and run from there)"
    )


# -- defect 2: pruning in the local executor ----------------------------------------------
def test_local_executor_prunes_an_obviously_bad_trial(tmp_path: Path, tiny_dataset: Path) -> None:
    path = write_tiny_study(
        tmp_path,
        tiny_dataset,
        "optim.lr: {type: float, low: 1.0e-8, high: 1.0e-2, log: true}\n",
        budget={"n_trials": 3},
        pruner={"metric": "referable_auc", "grace_period": 2, "reduction_factor": 2},
    )
    study = optuna.create_study(
        study_name="tiny",
        direction="maximize",
        storage=make_storage(load_study(path).config.storage_url()),
    )
    # two sound trials (the same configuration, so the second ties the first at the rung
    # instead of depending on which of two good curves is ahead), then one that cannot learn
    for lr in (3e-3, 3e-3, 1e-8):
        study.enqueue_trial({"optim.lr": lr})
    run_study(load_study(path))
    good, again, bad = study_trials(path)
    assert good.state == again.state == TrialState.COMPLETE
    assert good.intermediate_values == again.intermediate_values  # deterministic training
    assert bad.state == TrialState.PRUNED and bad.user_attrs["pruned_at_epoch"] == 2
    assert sorted(bad.intermediate_values) == [1, 2]
    assert "completed_rung_0" in bad.system_attrs  # ASHA's rung, kept in the study


# -- defects 3 and 4: a Ray worker killed between checkpoint and record, retried -----------
def test_ray_worker_killed_between_checkpoint_and_record_resumes_exactly(
    tmp_path: Path, tiny_dataset: Path
) -> None:
    path = write_tiny_study(
        tmp_path,
        tiny_dataset,
        LR_SPACE,
        executor="ray",
        budget={"n_trials": 1},
        pruner={"enabled": False},
        ray={"retries": 1},
        recipe_overrides={"train.epochs": 4, "train.threads": 1},
    )
    out = drsearch("run", str(path), "--quiet", DRSEARCH_FAULT="after_checkpoint:2")
    assert out.returncode == 0, out.stdout + out.stderr[-3000:]
    trials = study_trials(path)
    assert_settled(trials, 1)
    for t in trials:
        run_dir = Path(t.user_attrs["run_dir"])
        assert (run_dir / ".fault-after_checkpoint-2").exists()  # the worker really died
        assert t.state == TrialState.COMPLETE
        assert sorted(t.intermediate_values) == [1, 2, 3, 4]
        log = epoch_log(run_dir)
        assert log == uninterrupted(run_dir, tmp_path / f"ref{t.number}")
        best = json.loads((run_dir / "metrics.json").read_text())
        assert t.user_attrs["best_epoch"] == best["epoch"]
        expected = score(load_study(path).config.objective, log[best["epoch"] - 1]["val"])
        assert t.value == pytest.approx(expected.value)


# -- kill -9 of the runner, both executors; then --retry-failed ----------------------------
def _kill_runner_mid_trial(path: Path, log: Path) -> int:
    """Start ``drsearch run``, kill -9 it while a trial has recorded an epoch; its number."""
    with log.open("w") as fh:
        proc = subprocess.Popen(
            [sys.executable, "-m", "drsearch.cli", "run", str(path), "--quiet"],
            stdout=fh,
            stderr=subprocess.STDOUT,
        )
    db = load_study(path).config.run_root / "tiny.db"
    deadline = time.time() + 240
    while time.time() < deadline and proc.poll() is None:
        time.sleep(0.1)
        current = peek_trials(db)  # read-only: never races the runner creating the study
        running = [n for n, state, epochs in current if state == "RUNNING" and epochs]
        if running and any(state == "COMPLETE" for _, state, _ in current):
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait()
            return running[0]
    raise AssertionError(f"never caught a trial mid-run; runner said: {log.read_text()[-2000:]}")


def _study_id(path: Path) -> str:
    cfg = load_study(path).config
    storage = make_storage(cfg.storage_url())
    study = optuna.load_study(study_name=cfg.name, storage=storage)
    return str(storage.get_study_system_attrs(study._study_id)["drsearch:uuid"])[:8]


@pytest.mark.parametrize(
    "how",
    [
        "local",
        # the same path under Ray, and at an exact crash point (which test_cli's between-writes
        # tests also cover): `make test-all`
        pytest.param("ray", marks=pytest.mark.slow),
        pytest.param("local-between-writes", marks=pytest.mark.slow),
    ],
)
def test_runner_killed_then_continued_and_retried(
    tmp_path: Path, tiny_dataset: Path, how: str
) -> None:
    """kill -9 of the runner at a random moment (both executors), or exactly between an
    epoch's checkpoint and its log line; then a plain `run` (no --retry-failed) re-runs the
    interrupted trial's configuration from its checkpoint, to the curve of a run never
    interrupted, instead of drawing a new one in its place."""
    path = write_tiny_study(
        tmp_path,
        tiny_dataset,
        LR_SPACE,
        executor=how.partition("-")[0],
        budget={"n_trials": 2},
        pruner={"enabled": False},
        resources={"cpus_per_trial": 2, "max_concurrent": 1},
        recipe_overrides={"train.epochs": 5, "train.threads": 2},
    )
    if how == "local-between-writes":
        out = drsearch("run", str(path), "--quiet", DRSEARCH_FAULT="after_checkpoint:3")
        assert out.returncode == -signal.SIGKILL, out.stderr[-2000:]
        killed = 0
        assert len(epoch_log(tmp_path / "runs" / "tiny" / _study_id(path) / "0000")) == 2
    else:
        killed = _kill_runner_mid_trial(path, tmp_path / "runner.log")
    time.sleep(1.0)  # Ray's own processes follow their driver
    again = drsearch("run", str(path), "--quiet")
    assert again.returncode == 0, again.stdout + again.stderr[-2000:]
    assert f"marked interrupted: trials {killed}" in again.stdout
    assert f"interrupted earlier, queued again with their parameters: trials {killed}" in (
        again.stdout
    )
    trials = study_trials(path)
    assert_settled(trials, 2)
    assert trials[killed].user_attrs["fail_reason"] == "interrupted"
    (rerun,) = [t for t in trials if t.user_attrs.get("retry_of") == killed]
    assert rerun.state == TrialState.COMPLETE and rerun.params == trials[killed].params
    assert rerun.user_attrs["resumed_from_trial"] == killed  # continued from its checkpoint
    run_dir = Path(rerun.user_attrs["run_dir"])
    resumed_at = json.loads((run_dir / "resumes.jsonl").read_text().splitlines()[0])["epoch"]
    assert resumed_at >= 1
    assert epoch_log(run_dir) == uninterrupted(run_dir, tmp_path / "ref")
    assert sorted(rerun.intermediate_values) == [1, 2, 3, 4, 5]


# -- defect 6: runners started at once on one study -----------------------------------------
def _three_runners(path: Path, storage: str | None = None) -> list[subprocess.Popen]:
    extra = ["--storage", storage] if storage else []
    return [
        subprocess.Popen(
            [sys.executable, "-m", "drsearch.cli", "run", str(path), "--quiet", *extra],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(3)
    ]


def _wait(procs: list[subprocess.Popen]) -> list[str]:
    outputs = []
    for proc in procs:
        out, err = proc.communicate(timeout=600)
        assert proc.returncode == 0, out + err[-3000:]
        outputs.append(out)
    return outputs


def _check_three_runners(procs: list[subprocess.Popen], trials: list) -> None:
    assert len(trials) == 6 and all(t.state == TrialState.COMPLETE for t in trials)
    params = [json.dumps(t.params, sort_keys=True) for t in trials]
    assert len(set(params)) == 6  # no configuration twice, no lockstep
    assert len({t.system_attrs["drsearch:runner"] for t in trials}) >= 2


def _concurrent_study(tmp_path: Path, tiny_dataset: Path, **study: Any) -> Path:
    return write_tiny_study(
        tmp_path,
        tiny_dataset,
        LR_SPACE + "loss.name: {type: categorical, choices: [ce, focal]}\n",
        sampler={"name": "tpe", "seed": 0, "n_startup_trials": 2},
        budget={"n_trials": 6},
        pruner={"enabled": False},
        recipe_overrides={"train.epochs": 1, "schedule.warmup_epochs": 0, "train.threads": 1},
        **study,
    )


def test_three_runners_at_once_on_one_sqlite_study(tmp_path: Path, tiny_dataset: Path) -> None:
    path = _concurrent_study(tmp_path, tiny_dataset)
    procs = _three_runners(path)
    outputs = _wait(procs)
    _check_three_runners(procs, study_trials(path))
    # each runner's summary counts the trials it ran, not its neighbours'
    ran = [int(re.search(r"this run: (\d+) trial", out).group(1)) for out in outputs]  # type: ignore[union-attr]
    assert sum(ran) == 6, outputs


POSTGRES = os.environ.get("DRSEARCH_TEST_POSTGRES")


@pytest.mark.skipif(not POSTGRES, reason="set DRSEARCH_TEST_POSTGRES to a PostgreSQL URL")
def test_three_runners_at_once_on_a_fresh_postgresql_study(
    tmp_path: Path, tiny_dataset: Path
) -> None:
    """A new, empty schema: the runners also race to create Optuna's tables."""
    from sqlalchemy import create_engine, text

    assert POSTGRES is not None
    schema = f"s{uuid.uuid4().hex[:10]}"
    engine = create_engine(POSTGRES)
    with engine.begin() as conn:
        conn.execute(text(f"CREATE SCHEMA {schema}"))
    url = f"{POSTGRES}?options=-csearch_path%3D{schema}"
    try:
        path = _concurrent_study(tmp_path, tiny_dataset)
        procs = _three_runners(path, storage=url)
        _wait(procs)
        study = optuna.load_study(study_name="tiny", storage=url)
        _check_three_runners(procs, study.get_trials())
    finally:
        with engine.begin() as conn:
            conn.execute(text(f"DROP SCHEMA {schema} CASCADE"))
        engine.dispose()


# -- defect 5: continuing a study ----------------------------------------------------------
def test_continuing_a_study_proposes_no_earlier_configuration(
    tmp_path: Path, tiny_dataset: Path
) -> None:
    path = write_tiny_study(
        tmp_path,
        tiny_dataset,
        LR_SPACE,
        sampler={"name": "random", "seed": 0},
        pruner={"enabled": False},
        recipe_overrides={"train.epochs": 1, "schedule.warmup_epochs": 0},
    )
    first = drsearch_here("run", str(path), "--quiet")
    more = drsearch_here("run", str(path), "--quiet", "--n-trials", "4")
    assert first.returncode == more.returncode == 0, more.stderr[-2000:]
    lrs = [t.params["optim.lr"] for t in study_trials(path)]
    assert len(lrs) == 4 and len(set(lrs)) == 4
    assert "ran the same parameters" not in more.stderr


# -- defect 7: stale checkpoints -----------------------------------------------------------
def test_a_new_study_under_an_old_name_never_resumes_the_old_checkpoints(
    tmp_path: Path, tiny_dataset: Path, ray_cluster: None
) -> None:
    # the first two runs on the local executor (the run folders' naming is shared code); the
    # stale checkpoint under Ray, whose trainable resumes from a checkpoint it finds in the
    # trial's folder (Ray restarts trials itself): the executor where one could be taken
    path = write_tiny_study(
        tmp_path,
        tiny_dataset,
        LR_SPACE,
        executor="local",
        budget={"n_trials": 1},
        pruner={"enabled": False},
    )
    old = run_study(load_study(path))
    assert old.counts.complete == 1 and old.runs_dir is not None
    (tmp_path / "runs" / "tiny.db").unlink()  # yesterday's database is gone, its folders not
    new = run_study(load_study(path))
    (trial,) = study_trials(path)
    assert new.runs_dir != old.runs_dir and (old.runs_dir / "0000" / "metrics.jsonl").is_file()
    assert trial.state == TrialState.COMPLETE and sorted(trial.intermediate_values) == [1, 2, 3]
    assert not (Path(trial.user_attrs["run_dir"]) / "resumes.jsonl").exists()  # fresh start

    # a checkpoint of another recipe where a trial's own folder is (a crashed runner, a copy)
    assert new.runs_dir is not None
    stale = new.runs_dir / "0001"
    shutil.copytree(Path(trial.user_attrs["run_dir"]), stale)
    other = yaml.safe_load((stale / "config.yaml").read_text())
    other["optim"]["lr"] = 0.5
    (stale / "config.yaml").write_text(yaml.safe_dump(other))
    import torch

    state = torch.load(stale / "checkpoints" / "last.pt", weights_only=True)
    state["recipe"] = json.dumps(other)
    torch.save(state, stale / "checkpoints" / "last.pt")
    summary = run_study(load_study(path, {"budget.n_trials": 2, "executor": "ray"}))
    refused = study_trials(path)[1]
    assert refused.state == TrialState.FAIL and summary.counts.failed == 1
    assert "cannot resume: the recipe changed" in refused.user_attrs["fail_reason"]


# -- defect 9: artifacts -------------------------------------------------------------------
class _Sabotage:
    """A progress display that breaks the artifact store as each trial starts."""

    def __init__(self, folder: Path, how: str) -> None:
        self.folder, self.how, self.warnings = folder, how, []

    def trial_started(self, number: int, params: dict) -> None:
        shutil.rmtree(self.folder, ignore_errors=True)
        if self.how == "file":
            self.folder.write_text("not a folder")

    def trial_epoch(self, number: int, epoch: int, value: float) -> None: ...
    def trial_finished(self, number: int, outcome: object) -> None: ...

    def warn(self, message: str) -> None:
        self.warnings.append(message)


@pytest.mark.parametrize("how", ["deleted", "file"])
def test_a_broken_artifact_store_never_loses_a_trained_trial(
    tmp_path: Path, tiny_dataset: Path, how: str
) -> None:
    path = write_tiny_study(
        tmp_path, tiny_dataset, LR_SPACE, recipe_overrides={"train.epochs": 1,
                                                             "schedule.warmup_epochs": 0}
    )  # fmt: skip
    progress = _Sabotage(tmp_path / "runs" / "tiny-artifacts", how)
    summary = run_study(load_study(path), progress)
    assert summary.counts.complete == 2
    for t in study_trials(path):
        assert t.state == TrialState.COMPLETE and t.value is not None
        if how == "file":
            assert "artifact_error" in t.user_attrs
        else:
            assert "artifact_error" not in t.user_attrs
            assert any(k.startswith("artifacts:") for k in t.system_attrs)
    said = [w for w in progress.warnings if "low power: " not in w]  # the tiny set's 4 PDR
    assert len(said) == (2 if how == "file" else 0)


# -- a re-run after fixing a broken recipe ------------------------------------------------
def test_fixing_a_broken_recipe_then_retrying_the_failed_trials(
    tmp_path: Path, tiny_dataset: Path
) -> None:
    path = write_tiny_study(
        tmp_path,
        tiny_dataset,
        LR_SPACE,
        recipe_overrides={"model.name": "resnet_typo", "train.epochs": 1,
                          "schedule.warmup_epochs": 0},
    )  # fmt: skip
    broken = drsearch_here("run", str(path), "--quiet")
    assert broken.returncode == 1 and "unknown timm model 'resnet_typo'" in broken.stderr
    recipe = yaml.safe_load((tmp_path / "recipe.yaml").read_text())
    recipe["model"]["name"] = "resnet10t"
    (tmp_path / "recipe.yaml").write_text(yaml.safe_dump(recipe))
    idle = drsearch_here("run", str(path), "--quiet")
    assert idle.returncode == 1  # still nothing but failures in the study
    assert "nothing to run: the budget of 2 trials is spent and 2 of them failed" in idle.stdout
    assert "--retry-failed" in idle.stdout
    fixed = drsearch_here("run", str(path), "--quiet", "--retry-failed")
    assert fixed.returncode == 0, fixed.stdout + fixed.stderr[-2000:]
    trials = study_trials(path)
    assert_settled(trials, 2)
    reruns = [t for t in trials if "retry_of" in t.user_attrs]
    assert [t.state for t in reruns] == [TrialState.COMPLETE] * 2
    assert {t.user_attrs["retry_of"] for t in reruns} == {0, 1}
    assert [t.params for t in reruns] == [trials[0].params, trials[1].params]


def test_ctrl_c_then_the_printed_command_runs_the_cut_configuration_again(
    tmp_path: Path, tiny_dataset: Path
) -> None:
    """Ctrl-C (SIGINT at an exact moment: after epoch 2's record) during trial 0: the message
    says it resumes from its checkpoint; the continue command it prints, run exactly as
    printed from the same directory, re-runs that configuration (``retry_of``) from its
    checkpoint instead of drawing a new one in its place, and the budget is exact."""
    path = write_tiny_study(
        tmp_path, tiny_dataset, LR_SPACE, budget={"n_trials": 2}, pruner={"enabled": False},
        recipe_overrides={"train.epochs": 3},
    )  # fmt: skip
    cut = subprocess.run(
        [sys.executable, "-m", "drsearch.cli", "run", path.name, "--quiet"],
        cwd=tmp_path, capture_output=True, text=True, timeout=600,
        env={**os.environ, "DRSEARCH_FAULT": "after_record:2:INT"},
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),  # a background job's
    )  # fmt: skip
    assert cut.returncode == 130, cut.stdout + cut.stderr[-2000:]
    assert "trial(s) 0 resume from their last checkpoint" in cut.stderr, cut.stderr
    printed = re.search(r"Continue with `([^`]+)`", cut.stderr)
    assert printed is not None, cut.stderr
    command = printed.group(1).split()
    assert command[:2] == ["drsearch", "run"]
    again = subprocess.run(
        [sys.executable, "-m", "drsearch.cli", *command[1:]],
        cwd=tmp_path, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert again.returncode == 0, again.stdout + again.stderr[-2000:]
    assert "interrupted earlier, queued again with their parameters: trials 0" in again.stdout
    trials = study_trials(path)
    assert_settled(trials, 2)
    assert trials[0].user_attrs["fail_reason"] == "interrupted"
    (rerun,) = [t for t in trials if t.user_attrs.get("retry_of") == 0]
    assert rerun.params == trials[0].params and rerun.state == TrialState.COMPLETE
    assert rerun.user_attrs["resumed_from_trial"] == 0
    assert sorted(rerun.intermediate_values) == [1, 2, 3]
    assert len(trials) == 3  # the cut trial, its re-run, and one new draw for the budget


def test_a_configuration_interrupted_three_times_is_left_to_retry_failed(
    tmp_path: Path,
) -> None:
    """A configuration that takes its runner down each time (out of memory, say) is queued
    again twice, then left: no circle; the Ctrl-C message says which trials start afresh."""
    from drsearch.config.study import StudyConfig
    from drsearch.search.runners import _interrupted_message
    from drsearch.search.store import Requeued, StudyStore

    cfg = StudyConfig(name="s", recipe=Path("r.yaml"), search_space=Path("x.yaml"),
                      run_root=tmp_path)  # fmt: skip
    s = StudyStore(cfg)
    s.set_budget(5)
    first = s.claim()
    assert first is not None
    x = first.suggest_float("x", 0.0, 1.0)
    s.interrupt_own()
    cut = first.number
    for _ in range(2):  # queued again, taken by the next claim, interrupted again
        with s.lock.hold():
            assert s.requeue_locked().queued == [cut]
        trial = s.claim()
        assert trial is not None and trial.user_attrs["retry_of"] == cut
        assert s.study.trials[trial.number].system_attrs["fixed_params"] == {"x": x}
        s.interrupt_own()
        cut = trial.number
    with s.lock.hold():  # its third interruption in a row: left
        assert s.requeue_locked() == Requeued(queued=[], given_up=[cut])
    assert not s.study.get_trials(states=(TrialState.WAITING,))
    message = _interrupted_message(SimpleNamespace(config=cfg), s, [cut], "drsearch run s.yaml")
    assert "interrupted 3 times in a row" in message and "--retry-failed" in message
    fresh = s.claim()  # a new draw instead
    assert fresh is not None and "retry_of" not in fresh.user_attrs
    # a trial cut before any epoch finished starts afresh, and the message says so
    fresh = s.study.trials[0]
    message = _interrupted_message(SimpleNamespace(config=cfg), s, [0], "drsearch run s.yaml")
    assert "trial(s) 0 start again (no epoch had finished)" in message, fresh
    # a trial cut before it drew its parameters: a new draw takes its place, and it is said
    undrawn = s.claim()
    assert undrawn is not None
    s.interrupt_own()
    message = _interrupted_message(
        SimpleNamespace(config=cfg), s, [undrawn.number], "drsearch run s.yaml"
    )
    assert f"Trial(s) {undrawn.number} had drawn no parameters yet: new draws take" in message
    with s.lock.hold():
        assert undrawn.number not in s.requeue_locked().queued
    s.close()


def test_ctrl_c_while_a_trial_is_being_written_lets_it_go_as_interrupted(
    tmp_path: Path, tiny_dataset: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Ctrl-C in the middle of writing a finished trial (its attributes half written, its
    state not yet): the runner still holds it, marks it interrupted and says so (it used to
    say "no trial was running" and leave it RUNNING)."""
    from drsearch.search.store import StudyStore

    path = write_tiny_study(
        tmp_path, tiny_dataset, LR_SPACE, budget={"n_trials": 2}, pruner={"enabled": False},
        recipe_overrides={"train.epochs": 1, "schedule.warmup_epochs": 0},
    )  # fmt: skip
    written = StudyStore.set_user_attrs

    def cut(self: StudyStore, trial_id: int, attrs: dict) -> None:
        if "epochs_completed" in attrs:  # the trial's end, on its way to the study
            raise KeyboardInterrupt
        written(self, trial_id, attrs)

    monkeypatch.setattr(StudyStore, "set_user_attrs", cut)
    result = CliRunner().invoke(cli, ["run", str(path), "--quiet"])
    assert result.exit_code == 130, result.output
    assert "trial(s) 0 resume from their last checkpoint" in result.output
    (trial,) = study_trials(path)
    assert trial.state == TrialState.FAIL and trial.user_attrs["fail_reason"] == "interrupted"
