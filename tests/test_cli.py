"""The command line as a user meets it: exit codes, output, files; and kill -9 then --resume."""

from __future__ import annotations

import csv
import io
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from drsearch.cli import cli
from tests.conftest import tiny_recipe_dict


@pytest.fixture
def runner() -> CliRunner:
    return CliRunner()


def write_recipe(tmp_path: Path, root: Path, **overrides: object) -> Path:
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(tiny_recipe_dict(root, **overrides)))
    return path


def test_data_synth(runner: CliRunner, tmp_path: Path) -> None:
    result = runner.invoke(
        cli,
        [
            "data",
            "synth",
            "--out",
            str(tmp_path / "s"),
            "--n",
            "40",
            "--size",
            "48",
            "--imbalance",
            "eyepacs",
        ],
    )
    assert result.exit_code == 0, result.output
    assert "wrote 40 images (grade 0: 29, grade 1: 3, grade 2: 6, grade 3: 1, grade 4: 1)" in (
        result.output
    )
    assert len(list((tmp_path / "s" / "train_images").glob("*.png"))) == 40


def test_lr_csv_rows_per_step_and_group(
    runner: CliRunner, tmp_path: Path, tiny_dataset: Path
) -> None:
    path = write_recipe(
        tmp_path,
        tiny_dataset,
        **{
            "optim.backbone_lr_mult": 0.1,
            "schedule.name": "cosine_restarts",
            "schedule.warmup_epochs": 0,
            "schedule.t0": 1,
        },
    )
    result = runner.invoke(cli, ["lr", str(path), "--csv", "--steps-per-epoch", "5"])
    assert result.exit_code == 0, result.output
    rows = list(csv.DictReader(io.StringIO(result.output)))
    assert list(rows[0]) == ["epoch", "step", "group", "lr"]
    assert len(rows) == 3 * 5 * 2
    starts = [float(r["lr"]) for r in rows if r["group"] == "head" and int(r["step"]) % 5 == 0]
    assert starts == pytest.approx([2e-3] * 3)  # each 1-epoch SGDR cycle restarts at full LR
    backbone = {int(r["step"]): float(r["lr"]) for r in rows if r["group"] == "backbone"}
    head = {int(r["step"]): float(r["lr"]) for r in rows if r["group"] == "head"}
    assert all(backbone[s] == pytest.approx(head[s] * 0.1) for s in head)


def test_lr_table_from_data_with_notes(
    runner: CliRunner, tmp_path: Path, tiny_dataset: Path
) -> None:
    path = write_recipe(
        tmp_path, tiny_dataset, **{"schedule.warmup_epochs": 2.5, "train.epochs": 3}
    )
    result = runner.invoke(cli, ["lr", str(path)], terminal_width=200)
    assert result.exit_code == 0, result.output
    # 60 training images, batch 16 -> 3 full batches -> 3 optimizer steps per epoch
    assert "3 optimizer steps per epoch" in result.output
    assert "the head never reaches its configured LR 0.002" in result.output


@pytest.mark.e2e
def test_train_refuses_to_clobber_and_resume_needs_a_run(
    runner: CliRunner, tmp_path: Path, tiny_dataset: Path
) -> None:
    path = write_recipe(tmp_path, tiny_dataset, **{"train.epochs": 1, "schedule.warmup_epochs": 0})
    out = tmp_path / "run"
    assert runner.invoke(cli, ["train", str(path), "--out", str(out), "--resume"]).exit_code == 2
    first = runner.invoke(cli, ["train", str(path), "--out", str(out), "--quiet"])
    assert first.exit_code == 0, first.output
    assert first.output.startswith("best epoch 1/1 (completed): accuracy ")
    again = runner.invoke(cli, ["train", str(path), "--out", str(out)])
    assert again.exit_code == 2 and "already holds a run" in again.output
    extended = runner.invoke(
        cli, ["train", str(path), "--out", str(out), "--resume", "--epochs", "2", "--quiet"]
    )  # a longer run would bend the schedule the checkpoint was trained on: refused
    assert extended.exit_code == 2 and "(train.epochs 1 -> 2)" in extended.output
    resumed = runner.invoke(
        cli,
        ["train", str(path), "--out", str(out), "--resume", "--quiet", "--set", "train.threads=1"],
    )
    assert resumed.exit_code == 0, resumed.output
    assert "best epoch 1/1" in resumed.output
    assert len((out / "metrics.jsonl").read_text().splitlines()) == 1
    resumes = [json.loads(x) for x in (out / "resumes.jsonl").read_text().splitlines()]
    assert resumes == [{"epoch": 1, "changed": {"train.threads": [2, 1]}}]
    assert yaml.safe_load((out / "config.yaml").read_text())["train"]["threads"] == 1


@pytest.mark.e2e
@pytest.mark.slow  # test_study_robustness kills a runner at a random moment and compares too
def test_kill_9_then_resume_matches_uninterrupted(
    runner: CliRunner, tmp_path: Path, tiny_dataset: Path
) -> None:
    path = write_recipe(tmp_path, tiny_dataset, **{"train.epochs": 5, "train.ema": True})
    reference = runner.invoke(cli, ["train", str(path), "--out", str(tmp_path / "ref"), "--quiet"])
    assert reference.exit_code == 0, reference.output
    out = tmp_path / "killed"
    env = {**os.environ, "NO_ALBUMENTATIONS_UPDATE": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "drsearch.cli", "train", str(path), "--out", str(out), "--quiet"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    log = out / "metrics.jsonl"
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        if log.exists() and len(log.read_text().splitlines()) >= 2:
            break
        time.sleep(0.05)
    assert proc.poll() is None, "the run finished before it could be killed"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    resumed = runner.invoke(cli, ["train", str(path), "--out", str(out), "--resume", "--quiet"])
    assert resumed.exit_code == 0, resumed.output
    ref_best = json.loads((tmp_path / "ref" / "metrics.json").read_text())
    got_best = json.loads((out / "metrics.json").read_text())
    assert got_best == ref_best
    ref_log = [json.loads(x)["val"] for x in (tmp_path / "ref" / "metrics.jsonl").open()]
    got_log = [json.loads(x)["val"] for x in log.open()]
    assert got_log == ref_log


def _log(run_dir: Path) -> list[dict]:
    timing = ("epoch_seconds", "train_seconds")
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return [{k: v for k, v in json.loads(x).items() if k not in timing} for x in lines]


@pytest.mark.e2e
@pytest.mark.parametrize("point", ["after_checkpoint", "after_record"])
def test_kill_between_the_writes_of_an_epoch_then_resume_is_bit_exact(
    runner: CliRunner, tmp_path: Path, tiny_dataset: Path, point: str
) -> None:
    """A kill -9 after epoch 2's checkpoint but before its log line (or after both) and a
    --resume end with the log and metrics of a run that was never interrupted."""
    path = write_recipe(tmp_path, tiny_dataset, **{"train.epochs": 4, "train.ema": True})
    reference = runner.invoke(cli, ["train", str(path), "--out", str(tmp_path / "ref"), "--quiet"])
    assert reference.exit_code == 0, reference.output
    out = tmp_path / "killed"
    killed = subprocess.run(
        [sys.executable, "-m", "drsearch.cli", "train", str(path), "--out", str(out), "--quiet"],
        env={**os.environ, "DRSEARCH_FAULT": f"{point}:2"},
        capture_output=True,
        text=True,
    )
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    logged = len((out / "metrics.jsonl").read_text().splitlines())
    assert logged == (1 if point == "after_checkpoint" else 2)  # the window is really hit
    resumed = runner.invoke(cli, ["train", str(path), "--out", str(out), "--resume", "--quiet"])
    assert resumed.exit_code == 0, resumed.output
    assert _log(out) == _log(tmp_path / "ref")
    assert json.loads((out / "metrics.json").read_text()) == json.loads(
        (tmp_path / "ref" / "metrics.json").read_text()
    )
    resumes = [json.loads(x) for x in (out / "resumes.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in resumes] == [2]  # resumed from the checkpoint's own epoch


@pytest.mark.e2e
def test_resume_with_changed_optimisation_settings_is_refused(
    runner: CliRunner, tmp_path: Path, tiny_dataset: Path
) -> None:
    path = write_recipe(tmp_path, tiny_dataset, **{"train.epochs": 2, "schedule.warmup_epochs": 0})
    out = tmp_path / "run"
    first = runner.invoke(cli, ["train", str(path), "--out", str(out), "--quiet", "--epochs", "1"])
    assert first.exit_code == 0, first.output
    changed = runner.invoke(
        cli,
        ["train", str(path), "--out", str(out), "--resume", "--quiet", "--epochs", "1",
         "--set", "optim.lr=0.0005", "--set", "optim.backbone_lr_mult=0.1"],
    )  # fmt: skip
    assert changed.exit_code == 2
    line = changed.output.strip()
    assert line.count("\n") == 0 and "cannot resume: the recipe changed" in line
    assert "optim.lr 0.002 -> 0.0005" in line and "optim.backbone_lr_mult 1.0 -> 0.1" in line
    longer = runner.invoke(
        cli, ["train", str(path), "--out", str(out), "--resume", "--quiet", "--epochs", "3"]
    )
    assert longer.exit_code == 2 and "train.epochs 1 -> 3" in longer.output
    # where the data live, the thread count and the device may change
    same = runner.invoke(
        cli,
        ["train", str(path), "--out", str(out), "--resume", "--quiet", "--epochs", "1",
         "--set", "train.threads=1"],
    )  # fmt: skip
    assert same.exit_code == 0, same.output


@pytest.mark.e2e
def test_a_damaged_or_crafted_checkpoint_is_refused_in_one_line(
    runner: CliRunner, tmp_path: Path, tiny_dataset: Path
) -> None:

    path = write_recipe(tmp_path, tiny_dataset, **{"train.epochs": 1, "schedule.warmup_epochs": 0})
    out = tmp_path / "run"
    assert runner.invoke(cli, ["train", str(path), "--out", str(out), "--quiet"]).exit_code == 0
    last = out / "checkpoints" / "last.pt"
    last.write_bytes(last.read_bytes()[:200])  # truncated by a full disk, say
    damaged = runner.invoke(cli, ["train", str(path), "--out", str(out), "--resume", "--quiet"])
    assert damaged.exit_code == 2 and "damaged or truncated" in damaged.output
    marker = tmp_path / "pwned"

    class Exploit:
        def __reduce__(self):  # type: ignore[no-untyped-def]
            return (os.system, (f"touch {marker}",))

    import torch

    torch.save({"epoch": 1, "model": Exploit()}, last)
    crafted = runner.invoke(cli, ["train", str(path), "--out", str(out), "--resume", "--quiet"])
    assert crafted.exit_code == 2 and "never unpickles code" in crafted.output
    assert not marker.exists()


@pytest.mark.e2e
def test_study_commands_a_newcomer_meets(
    runner: CliRunner, tmp_path: Path, tiny_dataset: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """run (with --set and a storage from the environment) prints where to look next; trials,
    best and diagnose --trial best find what it ran; --debug shows the traceback."""
    from tests.conftest import write_tiny_study

    space = "optim.lr: {type: float, low: 1.0e-3, high: 1.0e-2, log: true}\n"
    path = write_tiny_study(
        tmp_path,
        tiny_dataset,
        space,
        objective={"metric": "accuracy", "constraints": []},
        pruner={"enabled": False},
    )
    db = tmp_path / "elsewhere" / "tiny.db"
    monkeypatch.setenv("DRSEARCH_STORAGE", f"sqlite:///{db}")
    # one epoch of 15 steps (batch 4): enough for a trial to beat the trivial model, which a
    # winner must; 4 steps (batch 16) leave BatchNorm's running statistics near their start
    ran = runner.invoke(cli, ["run", str(path), "--quiet", "--set", "train.epochs=1",
                              "--set", "schedule.warmup_epochs=0",
                              "--set", "train.batch_size=4"])  # fmt: skip
    assert ran.exit_code == 0, ran.output
    assert db.is_file() and not (tmp_path / "runs" / "tiny.db").exists()
    assert "study wall time:" in ran.output and "next steps:" in ran.output
    assert f"drsearch report {path}" in ran.output and f"drsearch trials {path}" in ran.output
    printed = f"drsearch export {path} -o recipes/tiny-best.yaml --weights recipes/tiny-best.pt"
    assert printed in ran.output
    monkeypatch.chdir(tmp_path)  # the printed command, as printed, writes recipe and weights
    exported = runner.invoke(cli, printed.split()[1:])
    assert exported.exit_code == 0, exported.output
    assert Path("recipes/tiny-best.yaml").is_file() and Path("recipes/tiny-best.pt").is_file()
    assert "drsearch predict recipes/tiny-best.yaml IMAGES_FOLDER\n" in exported.output

    table = runner.invoke(cli, ["trials", str(path), "--sort", "value"])
    assert table.exit_code == 0 and "study tiny: 2 trials" in table.output
    listed = json.loads(runner.invoke(cli, ["trials", str(path), "--format", "json"]).output)
    assert [t["number"] for t in listed] == [0, 1]
    assert all(t["state"] == "COMPLETE" and t["epochs"] == 1 for t in listed)  # --set applied
    top = max((t for t in listed if t["feasible"]), key=lambda t: (t["value"], -t["number"]))
    best = runner.invoke(cli, ["best", str(path)])
    assert best.exit_code == 0, best.output
    assert f"trial {top['number']}, search value {top['value']:.4f}" in best.output
    diagnosed = runner.invoke(cli, ["diagnose", str(path), "--trial", "best"])
    assert diagnosed.exit_code == 0 and "evidence:" in diagnosed.output

    bad = tmp_path / "bad.yaml"
    bad.write_text("optim: {lr: -1}\n")
    plain = runner.invoke(cli, ["train", str(bad)])
    assert plain.exit_code == 2 and plain.exception.__class__ is SystemExit
    debug = runner.invoke(cli, ["--debug", "train", str(bad)])
    assert type(debug.exception).__name__ == "ConfigError"  # the traceback is shown
    monkeypatch.setenv("DRSEARCH_DEBUG", "1")
    assert type(runner.invoke(cli, ["train", str(bad)]).exception).__name__ == "ConfigError"


@pytest.mark.e2e
def test_ctrl_c_says_what_was_interrupted_and_how_to_continue(
    tmp_path: Path, tiny_dataset: Path
) -> None:
    """A terminal's Ctrl-C, sent at an exact moment (after trial 0's second epoch is
    recorded, by the fault hook: no polling of a database the run is still creating): exit
    130, no traceback, the trial marked interrupted, and the continue command repeats the
    options that name the study's folder."""
    import optuna

    from drsearch.config.study import load_study
    from drsearch.search.database import make_storage
    from tests.conftest import write_tiny_study

    path = write_tiny_study(
        tmp_path,
        tiny_dataset,
        "optim.lr: {type: float, low: 1.0e-3, high: 1.0e-2, log: true}\n",
        budget={"n_trials": 3},
        pruner={"enabled": False},
        recipe_overrides={"train.epochs": 4},
    )
    proc = subprocess.run(
        # from the study's folder, naming its run root relatively (the same folder)
        [sys.executable, "-m", "drsearch.cli", "run", path.name, "--quiet", "--run-root", "runs"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=600,
        env={**os.environ, "DRSEARCH_FAULT": "after_record:2:INT"},
        # SIGINT handled, even when this test runs as a background job (whose children
        # inherit SIGINT ignored, and Python then never raises on it)
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    err = proc.stderr
    assert proc.returncode == 130, err[-2000:]
    assert "Interrupted: study tiny. Continue with `drsearch run tiny.yaml --run-root runs`" in err
    assert "trial(s) 0 resume from their last checkpoint" in err
    assert "Traceback" not in err
    url = load_study(path).config.storage_url()
    trial = optuna.load_study(study_name="tiny", storage=make_storage(url)).trials[0]
    assert trial.state.name == "FAIL" and trial.user_attrs["fail_reason"] == "interrupted"
    assert sorted(trial.intermediate_values) == [1]  # epoch 2: in its checkpoint, unreported


def test_the_trials_table_shows_notes_in_brackets_as_text() -> None:
    """rich reads "[...]" as markup: the note of a pruned, failed or re-run trial must not
    vanish from `drsearch trials`."""
    from rich.console import Console

    from drsearch.cli.inspect import trials_table
    from drsearch.inspect.trials import TrialLine

    lines = [
        TrialLine(0, "PRUNED", None, None, {}, 2, 2, 3.0, {"optim.lr": 0.001}, "pruned at epoch 2"),
        TrialLine(1, "FAIL", None, None, {}, 0, None, 1.0, {}, "unknown timm model 'x' [bold]"),
    ]
    console = Console(width=200, record=True, file=open("/dev/null", "w"))  # noqa: SIM115
    console.print(trials_table("tiny [s]", lines))
    text = console.export_text()
    assert "study tiny [s]: 2 trials" in text
    assert "optim.lr=0.001  [pruned at epoch 2]" in text
    assert "[unknown timm model 'x' [bold]]" in text


def test_the_printed_continue_command_repeats_what_changes_the_run(
    tmp_path: Path, tiny_dataset: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """--n-trials (the budget is the last run's) and --set (the study's definition) are part
    of the command printed after Ctrl-C; without them it would run another study."""
    from drsearch.errors import StudyInterrupted
    from drsearch.search import runners
    from tests.conftest import write_tiny_study

    path = write_tiny_study(
        tmp_path, tiny_dataset, "optim.lr: {type: float, low: 0.001, high: 0.01}"
    )
    seen = {}

    def interrupted(loaded, progress=None, **kwargs):  # type: ignore[no-untyped-def]
        seen.update(kwargs)
        raise StudyInterrupted(f"Interrupted: continue with `{kwargs['rerun']} --retry-failed`")

    monkeypatch.setattr(runners, "run_study", interrupted)
    out = CliRunner().invoke(
        cli,
        ["run", str(path), "--quiet", "--n-trials", "4", "--set", "train.epochs=2",
         "--run-root", str(tmp_path / "r")],
    )  # fmt: skip
    assert out.exit_code == 130, out.output
    expected = f"drsearch run {path} --run-root {tmp_path / 'r'} --n-trials 4 --set train.epochs=2"
    assert seen["rerun"] == expected and f"`{expected} --retry-failed`" in out.output


def test_printed_commands_run_as_printed_with_a_space_and_another_study_name(
    tmp_path: Path, tiny_dataset: Path
) -> None:
    """A study file in a folder with a space, run under --study-name: the continue command
    printed at Ctrl-C and the next steps quote the path and repeat --study-name, and each,
    run exactly as printed (split as a shell splits it), opens that study."""
    import shlex

    import yaml

    from tests.conftest import write_tiny_study

    folder = tmp_path / "my dir"
    folder.mkdir()
    path = write_tiny_study(
        folder, tiny_dataset, "optim.lr: {type: float, low: 1.0e-3, high: 1.0e-2, log: true}\n",
        budget={"n_trials": 2}, pruner={"enabled": False},
        recipe_overrides={"train.epochs": 2, "schedule.warmup_epochs": 0},
    )  # fmt: skip
    body = yaml.safe_load(path.read_text())
    body["run_root"] = "runs"  # relative: the commands run from tmp_path
    path.write_text(yaml.safe_dump(body))
    run = [sys.executable, "-m", "drsearch.cli"]
    cut = subprocess.run(
        [*run, "run", "my dir/tiny.yaml", "--quiet", "--study-name", "other"],
        cwd=tmp_path, capture_output=True, text=True, timeout=600,
        env={**os.environ, "DRSEARCH_FAULT": "after_record:1:INT"},
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )  # fmt: skip
    assert cut.returncode == 130, cut.stderr[-2000:]
    printed = cut.stderr.split("Continue with `")[1].split("`")[0]
    assert printed == "drsearch run 'my dir/tiny.yaml' --study-name other"
    again = subprocess.run(
        [*run, *shlex.split(printed)[1:]], cwd=tmp_path, capture_output=True, text=True,
        timeout=600,
    )  # fmt: skip
    assert again.returncode == 0, again.stderr[-2000:]
    assert "study other (" in again.stdout
    steps = [line.split("#")[0].strip() for line in again.stdout.splitlines()
             if line.startswith("  drsearch ")]  # fmt: skip
    best = next(step for step in steps if step.startswith("drsearch best"))
    assert best == "drsearch best 'my dir/tiny.yaml' --study-name other"
    shown = subprocess.run(
        [*run, *shlex.split(best)[1:]], cwd=tmp_path, capture_output=True, text=True,
        timeout=600,
    )  # fmt: skip
    assert shown.returncode in (0, 3), shown.stderr  # a winner, or none: the study is found
    assert "no study" not in shown.stderr


def test_a_storage_password_is_never_printed_in_a_command() -> None:
    """A storage URL with a password is repeated as --storage "$DRSEARCH_STORAGE" with a note
    to set it (printing it masked would give a command that cannot connect)."""
    from drsearch.cli.common import storage_note, study_args

    url = "postgresql+psycopg2://alice:Pa@ss%40w:rd@db.example/drsearch"
    assert study_args(Path("s.yaml"), storage=url) == 's.yaml --storage "$DRSEARCH_STORAGE"'
    assert "export DRSEARCH_STORAGE=" in storage_note(url) and "Pa@ss" not in storage_note(url)
    plain = "sqlite:////tmp/a b/s.db"
    assert study_args(Path("s.yaml"), storage=plain) == "s.yaml --storage 'sqlite:////tmp/a b/s.db'"
    assert storage_note(plain) == ""


def test_a_smoke_runs_next_steps_never_export_over_the_real_result(
    capsys: pytest.CaptureFixture[str],
) -> None:
    from types import SimpleNamespace

    from drsearch.cli.summary import print_next_steps

    s = SimpleNamespace(name="fin", best=object(), closest=None, tracking_steps=[],
                        counts=SimpleNamespace(counted=1, paused=0))  # fmt: skip
    for named, file in (("fin.yaml --smoke", "fin-smoke-best"), ("fin.yaml", "fin-best")):
        for certified in (True, False):
            print_next_steps(named, s, True, True, True, certified)
            out = capsys.readouterr().out
            assert f"drsearch export {named} -o recipes/{file}.yaml" in out, out
            assert ("--weights" in out) != certified
