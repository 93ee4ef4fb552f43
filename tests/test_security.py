"""A hostile or careless user: no code runs from files, nothing is written or deleted outside
the run root, secrets never shown, and a bad input is one line with exit code 2."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
import torch
import yaml
from click.testing import CliRunner

from drsearch.cli import cli
from drsearch.search.database import masked_url
from tests.conftest import tiny_recipe_dict, write_tiny_study

SPACE = "optim.lr: {type: float, low: 1.0e-3, high: 1.0e-2, log: true}\n"


@pytest.fixture
def runner() -> CliRunner:
    return CliRunner()


def files_under(folder: Path) -> set[Path]:
    return {p.relative_to(folder) for p in folder.rglob("*")}


class Exploit:
    """Unpickling this runs a shell command (what a crafted .pt file does)."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):  # type: ignore[no-untyped-def]
        return (os.system, (f"touch {self.marker}",))


# -- 1. no code from files ------------------------------------------------------------------
def test_crafted_weights_file_is_refused_and_runs_nothing(
    runner: CliRunner, tmp_path: Path, tiny_dataset: Path
) -> None:
    marker = tmp_path / "pwned"
    weights = tmp_path / "weights.pt"
    torch.save({"model": {"conv.weight": Exploit(marker)}}, weights)
    recipe = tiny_recipe_dict(tiny_dataset, **{"model.pretrained": str(weights)})
    (tmp_path / "r.yaml").write_text(yaml.safe_dump(recipe))
    out = runner.invoke(cli, ["train", str(tmp_path / "r.yaml"), "--out", str(tmp_path / "run")])
    assert out.exit_code == 2 and "never unpickles code" in out.output
    assert "Traceback" not in out.output and not marker.exists()


# -- 2. the run root ------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["..", "../escape", "a/../../b", "/tmp/abs", "a\x00b", ""])
def test_a_study_name_cannot_leave_the_run_root(
    runner: CliRunner, tmp_path: Path, tiny_dataset: Path, name: str
) -> None:
    path = write_tiny_study(tmp_path, tiny_dataset, SPACE, run_root=str(tmp_path / "root"))
    data = yaml.safe_load(path.read_text())
    data["name"] = name
    path.write_text(yaml.safe_dump(data))
    before = files_under(tmp_path)
    out = runner.invoke(cli, ["run", str(path), "--quiet"])
    assert out.exit_code == 2, out.output
    assert "name: must be 1-64 letters, digits, '_', '-' or '.'" in out.output
    assert files_under(tmp_path) == before  # nothing created anywhere
    for smoke in (["--smoke"], []):
        again = runner.invoke(cli, ["run", str(path), "--quiet", *smoke])
        assert again.exit_code == 2 and files_under(tmp_path) == before


def test_a_symlink_out_of_the_run_root_is_refused(
    runner: CliRunner, tmp_path: Path, tiny_dataset: Path
) -> None:
    path = write_tiny_study(tmp_path, tiny_dataset, SPACE, run_root=str(tmp_path / "root"))
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    (tmp_path / "root").mkdir()
    (tmp_path / "root" / "tiny").symlink_to(outside)  # planted where the study's folders go
    out = runner.invoke(cli, ["run", str(path), "--quiet"])
    assert out.exit_code == 2 and "outside the run root" in out.output
    assert not list(outside.iterdir())


def test_smoke_deletes_only_what_it_made(
    runner: CliRunner, tmp_path: Path, tiny_dataset: Path
) -> None:
    path = write_tiny_study(tmp_path, tiny_dataset, SPACE, run_root=str(tmp_path / "root"))
    precious = tmp_path / "root" / "smoke" / "tiny"
    precious.mkdir(parents=True)
    (precious / "thesis.tex").write_text("years of work")
    out = runner.invoke(cli, ["run", str(path), "--quiet", "--smoke"])
    assert out.exit_code == 2, out.output
    assert "not deleting it: drsearch did not make it" in out.output
    assert (precious / "thesis.tex").read_text() == "years of work"


@pytest.mark.e2e
def test_train_overwrite_deletes_only_run_folders(
    runner: CliRunner, tmp_path: Path, tiny_dataset: Path
) -> None:
    recipe = tiny_recipe_dict(tiny_dataset, **{"train.epochs": 1, "schedule.warmup_epochs": 0})
    (tmp_path / "r.yaml").write_text(yaml.safe_dump(recipe))
    home = tmp_path / "home"
    (home / "checkpoints").mkdir(parents=True)  # looks like a run, holds other things too
    (home / "notes.txt").write_text("mine")
    args = ["train", str(tmp_path / "r.yaml"), "--quiet", "--overwrite"]
    refused = runner.invoke(cli, [*args, "--out", str(home)])
    assert refused.exit_code == 2 and "only deletes run folders drsearch wrote" in refused.output
    assert (home / "notes.txt").exists()
    run = tmp_path / "run"
    assert runner.invoke(cli, [*args, "--out", str(run)]).exit_code == 0
    assert (run / ".drsearch-owned").is_file()
    again = runner.invoke(cli, [*args, "--out", str(run)])
    assert again.exit_code == 0, again.output


@pytest.mark.e2e
def test_a_checkpoint_save_cut_short_is_cleaned_up(
    runner: CliRunner, tmp_path: Path, tiny_dataset: Path
) -> None:
    recipe = tiny_recipe_dict(tiny_dataset, **{"train.epochs": 2, "schedule.warmup_epochs": 0})
    (tmp_path / "r.yaml").write_text(yaml.safe_dump(recipe))
    run = tmp_path / "run"
    args = ["train", str(tmp_path / "r.yaml"), "--quiet", "--out", str(run)]
    assert runner.invoke(cli, [*args, "--epochs", "2"]).exit_code == 0
    leftover = run / "checkpoints" / ".last.pt.4242.tmp"
    leftover.write_bytes(b"half a checkpoint")
    mine = run / "checkpoints" / "notes.tmp"
    mine.write_text("not drsearch's")
    assert runner.invoke(cli, [*args, "--resume"]).exit_code == 0
    assert not leftover.exists() and mine.exists()


# -- 3. secrets in URLs -----------------------------------------------------------------------
@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("postgresql://u:s3cret@h/db", "postgresql://u:***@h/db"),
        ("postgresql://u@h/db?password=s3cret", "postgresql://u@h/db?password=***"),
        (
            "postgresql+psycopg2://u@h:5432/db?sslmode=require&sslpassword=s3cret",
            "postgresql+psycopg2://u@h:5432/db?sslmode=require&sslpassword=***",
        ),
        ("postgresql://h/db?api_token=s3cret&application_name=x", "api_token=***"),
        ("sqlite:////tmp/x.db", "sqlite:////tmp/x.db"),
        ("::not a url s3cret::", "<storage URL hidden"),
    ],
)
def test_every_secret_of_a_url_is_masked(url: str, shown: str) -> None:
    assert shown in masked_url(url) and "s3cret" not in masked_url(url)


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        # an @ in the password: the HTTP client (urllib, requests) splits at the last @ of
        # the authority, SQLAlchemy at the first (taking "SECRET@host" for the host)
        ("postgresql://alice:Pa@SECRET@host/db", "postgresql://alice:***@host/db"),
        ("http://alice:Pa@SECRET@host", "http://alice:***@host"),
        ("https://alice:Pa@SE:CRET@host:5000/mlflow", "https://alice:***@host:5000/mlflow"),
        ("http://alice:Pa%40SECRET@127.0.0.1:5000", "http://alice:***@127.0.0.1:5000"),
        ("http://alice:Pa:SE%3ACRET@host", "http://alice:***@host"),
        (
            "postgresql+psycopg2://alice:x@y:SECRET%40z@db.example:5432/s?sslpassword=SECRET",
            "postgresql+psycopg2://alice:***@db.example:5432/s?sslpassword=***",
        ),
        ("postgresql://alice:pa/SECRET@host/db", "postgresql://alice:***@host/db"),
        ("http://host:5000/runs/a@b", "http://host:5000/runs/a@b"),  # an @ in the path
        ("mlruns", "mlruns"),  # MLflow's local folder: nothing to hide
    ],
)
def test_a_password_with_at_colon_or_percent40_is_masked_whole(url: str, shown: str) -> None:
    from urllib.parse import urlsplit

    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    from drsearch.search.database import hide_secrets

    assert masked_url(url) == shown and "SECRET" not in masked_url(url)
    # what each parser may echo in an error: its password, or the host SQLAlchemy takes
    said = [url]
    if "://" in url:
        said.append(f"password {urlsplit(url).password!r}, host {urlsplit(url).hostname!r}")
    try:  # SQLAlchemy's own reading, where it can read it at all
        parsed = make_url(url)
        said.append(f'could not translate host name "{parsed.host}": {parsed.password}')
    except (ValueError, ArgumentError):
        pass
    for text in said:
        assert "SECRET" not in hide_secrets(text, url), text


def test_a_storage_password_with_an_at_is_never_shown(
    runner: CliRunner, tmp_path: Path, tiny_dataset: Path
) -> None:
    """SQLAlchemy takes the part of the password after its @ for the host, and the driver
    names that host in its error."""
    for url in (
        "postgresql+psycopg2://drs:Pw@SECRETA@127.0.0.1:9/db?connect_timeout=2",
        "postgresql+psycopg2://drs:P:w%40SECRETB@SECRETC@127.0.0.1:9/db?connect_timeout=2",
    ):
        path = write_tiny_study(tmp_path, tiny_dataset, SPACE, storage=url)
        for command in ("run", "report", "trials", "best"):  # the file's URL, then --storage
            out = runner.invoke(cli, [command, str(path), "--storage", url])
            assert out.exit_code == 2 and "Traceback" not in out.output, out.output
            assert "SECRET" not in out.output and "drs:***@127.0.0.1:9/db" in out.output
    # a URL the study file gets wrong is named by its key, never echoed
    long = f"http://alice:Pw@SECRETA@host/{'a' * 2000}"
    path = write_tiny_study(
        tmp_path, tiny_dataset, SPACE, tracking={"mlflow": {"tracking_uri": long}}
    )
    out = runner.invoke(cli, ["check", str(path)])
    assert out.exit_code == 2 and "tracking.mlflow.tracking_uri" in out.output, out.output
    assert "SECRET" not in out.output


def test_a_storage_that_cannot_be_opened_names_it_without_its_secrets(
    runner: CliRunner, tmp_path: Path, tiny_dataset: Path
) -> None:
    url = "postgresql+psycopg2://drs:s3cret@127.0.0.1:9/db?sslpassword=s3cret2&connect_timeout=2"
    path = write_tiny_study(tmp_path, tiny_dataset, SPACE, storage=url)
    out = runner.invoke(cli, ["run", str(path), "--quiet"])
    assert out.exit_code == 2 and "cannot open it" in out.output
    assert "postgresql+psycopg2://drs:***@127.0.0.1:9/db" in out.output
    assert "s3cret" not in out.output and "Traceback" not in out.output
    report = runner.invoke(cli, ["report", str(path)])
    assert report.exit_code == 2 and "s3cret" not in report.output


POSTGRES = os.environ.get("DRSEARCH_TEST_POSTGRES")


@pytest.mark.e2e
@pytest.mark.skipif(not POSTGRES, reason="set DRSEARCH_TEST_POSTGRES to a PostgreSQL URL")
def test_a_password_in_the_query_is_never_printed_or_written(
    runner: CliRunner, tmp_path: Path, tiny_dataset: Path
) -> None:
    from sqlalchemy.engine import make_url

    assert POSTGRES is not None
    parsed = make_url(POSTGRES)
    secret = str(parsed.password)
    url = f"{parsed.drivername}://{parsed.username}@{parsed.host}/{parsed.database}"
    url += f"?password={secret}"
    path = write_tiny_study(
        tmp_path,
        tiny_dataset,
        SPACE,
        name=f"q{os.getpid()}",
        storage=url,
        pruner={"enabled": False},
        budget={"n_trials": 1},
        recipe_overrides={"train.epochs": 1, "schedule.warmup_epochs": 0},
    )
    ran = runner.invoke(cli, ["run", str(path), "--quiet"])
    assert ran.exit_code == 0, ran.output
    assert "password=***" in ran.output
    out = tmp_path / "best.yaml"
    exported = runner.invoke(cli, ["export", str(path), "--trial", "0", "-o", str(out)])
    assert exported.exit_code == 0, exported.output
    assert "password=***" in out.read_text()
    # everything drsearch wrote (the study file is the user's own, secret and all)
    written = [out, *(p for p in (tmp_path / "runs").rglob("*") if p.is_file())]
    text = ran.output + exported.output + "".join(p.read_text(errors="ignore") for p in written)
    assert "password=***" in ran.output
    assert f"password={secret}" not in text and f":{secret}@" not in text


# -- 4. the dashboard ---------------------------------------------------------------------------
@pytest.mark.e2e
def test_the_dashboard_warns_that_it_has_no_authentication(
    runner: CliRunner, tmp_path: Path, tiny_dataset: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import bottle

    served: list[str] = []
    monkeypatch.setattr(bottle, "run", lambda *a, **kw: served.append(kw["host"]))
    path = write_tiny_study(
        tmp_path, tiny_dataset, SPACE, recipe_overrides={"train.epochs": 1,
                                                         "schedule.warmup_epochs": 0},
        budget={"n_trials": 1},
    )  # fmt: skip
    assert runner.invoke(cli, ["run", str(path), "--quiet"]).exit_code == 0
    local = runner.invoke(cli, ["dashboard", str(path)])
    assert local.exit_code == 0 and "no authentication" not in local.output
    wide = runner.invoke(cli, ["dashboard", str(path), "--host", "0.0.0.0"])
    assert wide.exit_code == 0 and "optuna-dashboard has no authentication" in wide.output
    assert served == ["127.0.0.1", "0.0.0.0"]


# -- bad input ----------------------------------------------------------------------------------
@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without a GPU")
def test_cuda_without_a_gpu_is_one_line(
    runner: CliRunner, tmp_path: Path, tiny_dataset: Path
) -> None:
    recipe = tiny_recipe_dict(tiny_dataset, **{"train.device": "cuda"})
    (tmp_path / "r.yaml").write_text(yaml.safe_dump(recipe))
    out = runner.invoke(cli, ["train", str(tmp_path / "r.yaml"), "--out", str(tmp_path / "x")])
    assert out.exit_code == 2
    assert "train.device: cuda, but torch" in out.output and "finds no CUDA GPU" in out.output


@pytest.mark.e2e
def test_an_unreadable_image_is_skipped_with_skip_bad(
    runner: CliRunner, tmp_path: Path, tiny_dataset: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A file that is there but cannot be read (permission denied: faked, as tests may run
    as root, who reads everything)."""
    data = tmp_path / "data"
    shutil.copytree(tiny_dataset, data)
    victim = sorted((data / "train_images").iterdir())[0]
    read_bytes, os_open = Path.read_bytes, os.open

    def denied_bytes(self: Path) -> bytes:
        if self == victim:
            raise PermissionError(13, "Permission denied", str(self))
        return read_bytes(self)

    def denied_open(path: str, flags: int, *args: int) -> int:
        if os.fsdecode(path) == str(victim):
            raise PermissionError(13, "Permission denied", str(path))
        return os_open(path, flags, *args)

    monkeypatch.setattr(Path, "read_bytes", denied_bytes)
    monkeypatch.setattr(os, "open", denied_open)
    recipe = tiny_recipe_dict(data, **{"train.epochs": 1, "schedule.warmup_epochs": 0})
    (tmp_path / "r.yaml").write_text(yaml.safe_dump(recipe))
    stop = runner.invoke(cli, ["train", str(tmp_path / "r.yaml"), "--out", str(tmp_path / "a")])
    assert stop.exit_code == 2 and f"{victim}: permission denied (1 unreadable" in stop.output
    skip = runner.invoke(
        cli,
        ["train", str(tmp_path / "r.yaml"), "--out", str(tmp_path / "b"), "--quiet",
         "--set", "data.skip_bad=true"],
    )  # fmt: skip
    assert skip.exit_code == 0, skip.output
    assert "skipped (data.skip_bad): 1 x unreadable image; the files are listed" in skip.output
    run = yaml.safe_load((tmp_path / "b" / "run.json").read_text())
    assert run["skipped"] == {"unreadable image": 1}


def test_commands_given_the_other_kind_of_file_say_which_to_use(
    runner: CliRunner, tmp_path: Path, tiny_dataset: Path
) -> None:
    study = write_tiny_study(tmp_path, tiny_dataset, SPACE)
    recipe = tmp_path / "recipe.yaml"
    wrong = runner.invoke(cli, ["run", str(recipe)])
    assert wrong.exit_code == 2 and "this is a training recipe, not a study file" in wrong.output
    assert f"drsearch train {recipe}" in wrong.output
    back = runner.invoke(cli, ["train", str(study)])
    assert back.exit_code == 2 and f"run the study with `drsearch run {study}`" in back.output
    schedule = runner.invoke(cli, ["lr", str(study), "--steps-per-epoch", "2", "--csv"])
    assert schedule.exit_code == 0 and schedule.output.startswith("epoch,step,group,lr")
    # an exported recipe without its weights: the command that evaluates it, naming the .pt
    # that `export --weights` wrote beside it
    recipe.with_suffix(".pt").write_bytes(b"")
    bare = runner.invoke(cli, ["evaluate", str(recipe)])
    assert bare.exit_code == 2, bare.output
    assert (
        f"`drsearch evaluate {recipe} --weights FILE.pt` (--weights {recipe.with_suffix('.pt')}"
        in bare.output
    )


def test_reading_a_study_that_has_not_run_creates_nothing(
    runner: CliRunner, tmp_path: Path, tiny_dataset: Path
) -> None:
    study = write_tiny_study(tmp_path, tiny_dataset, SPACE)
    before = files_under(tmp_path)
    for args in (
        ["export", str(study), "-o", str(tmp_path / "x.yaml")],
        ["report", str(study)],
        ["diagnose", str(study), "--trial", "0"],
        ["dashboard", str(study)],
    ):
        out = runner.invoke(cli, args)
        assert out.exit_code == 2, (args, out.output)
        assert "no study 'tiny' in sqlite:///" in out.output and "run it first" in out.output
    assert files_under(tmp_path) == before


BOMB = "\n".join(
    [f"a0: &a0 [{', '.join(['lol'] * 9)}]"]
    + [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 9)}]" for i in range(1, 9)]
)  # nine levels of anchors of aliases: 9**9 values once expanded, 9 lines of text


@pytest.mark.parametrize("which", ["study", "recipe", "space"])
def test_a_yaml_alias_bomb_is_refused_in_one_line(
    tmp_path: Path, tiny_dataset: Path, which: str
) -> None:
    study = write_tiny_study(
        tmp_path, tiny_dataset, "optim.lr: {type: float, low: 0.001, high: 0.01}"
    )
    target = {"study": study, "recipe": tmp_path / "recipe.yaml", "space": tmp_path / "space.yaml"}
    bad = target[which]
    if which == "study":
        bad.write_text(bad.read_text() + BOMB + "\n")
    else:
        bad.write_text(BOMB + "\n")
    import signal

    def hung(signum: int, frame: object) -> None:
        raise AssertionError("the loader hung (it walked all 9**9 values before the fix)")

    signal.signal(signal.SIGALRM, hung)
    signal.alarm(60)
    try:
        out = CliRunner().invoke(cli, ["check", str(study)])
    finally:
        signal.alarm(0)
    assert out.exit_code == 2, out.output
    (line,) = [ln for ln in out.output.splitlines() if ln.strip()]
    assert f"{bad}: its aliases (*name) expand to more than 100,000 values" in line


def test_shared_aliases_within_the_limit_still_load(tmp_path: Path) -> None:
    from drsearch.config.loading import read_yaml

    path = tmp_path / "ok.yaml"
    path.write_text("base: &b {lr: 0.1, wd: 0.01}\nx: *b\ny: *b\n")
    assert read_yaml(path) == {
        "base": {"lr": 0.1, "wd": 0.01},
        "x": {"lr": 0.1, "wd": 0.01},
        "y": {"lr": 0.1, "wd": 0.01},
    }


def test_a_fifo_named_as_a_recipe_or_weights_is_refused_never_read(tmp_path: Path) -> None:
    """A FIFO (or device) given where a YAML file or a weights file belongs would block the
    read forever: refused in one line before it is opened. In a subprocess with a bound, so a
    regression fails this test instead of hanging the suite."""
    import os
    import subprocess
    import sys

    fifo = tmp_path / "model.yaml"
    os.mkfifo(fifo)
    script = (
        "import sys\n"
        "from pathlib import Path\n"
        "from drsearch.config.loading import read_yaml\n"
        "from drsearch.train.checkpoint import load_weights_only\n"
        "p = Path(sys.argv[1])\n"
        "for call in (lambda: read_yaml(p), lambda: load_weights_only(p, str(p), 'fix')):\n"
        "    try:\n"
        "        call()\n"
        "    except Exception as exc:\n"
        "        print(type(exc).__name__, exc)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", script, str(fifo)], capture_output=True, text=True, timeout=120
    )
    lines = out.stdout.splitlines()
    assert lines == [
        f"ConfigError {fifo}: not a regular file",
        f"TrainingError {fifo}: not a regular file (a FIFO, device, socket or folder); fix",
    ], out.stdout + out.stderr
