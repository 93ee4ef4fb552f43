"""Commands that look at results: ``report``, ``dashboard``, ``diagnose``."""

from __future__ import annotations

from pathlib import Path

import click
from rich.console import Console

from drsearch.cli.common import UserError, _open_study, _smoke_options, cli


@cli.command()
@click.argument("study", type=click.Path(path_type=Path, dir_okay=False), metavar="STUDY.yaml")
@click.option(
    "--out",
    type=click.Path(path_type=Path, file_okay=False),
    help="Folder for report.html (default: reports/<study name>/).",
)
@click.option("--storage", help="SQLAlchemy URL of the Optuna storage (default: the study's).")
@_smoke_options
def report(
    study: Path, out: Path | None, storage: str | None, run_root: Path | None, smoke: bool
) -> None:
    """Write a self-contained HTML report of a study (opens offline)."""
    from drsearch.inspect.report.plots import write_report
    from drsearch.inspect.report.records import build_records
    from drsearch.search.database import open_existing

    loaded = _open_study(study, storage, run_root, smoke)
    cfg = loaded.config
    opened = open_existing(cfg, study)
    default = Path("reports") / (f"{cfg.name}-smoke" if smoke else cfg.name)
    path = write_report(build_records(loaded, opened), out or default)
    click.echo(f"report of study {cfg.name} -> {path}")


@cli.command()
@click.argument("study", type=click.Path(path_type=Path, dir_okay=False), metavar="STUDY.yaml")
@click.option(
    "--host",
    default="127.0.0.1",
    show_default=True,
    help="Interface to bind; anything but loopback exposes the study to the network.",
)
@click.option("--port", default=8080, show_default=True, type=click.IntRange(1, 65535))
@click.option("--storage", help="SQLAlchemy URL of the Optuna storage (default: the study's).")
@_smoke_options
def dashboard(
    study: Path, host: str, port: int, storage: str | None, run_root: Path | None, smoke: bool
) -> None:
    """Serve optuna-dashboard on the study's storage, with its trial artifacts."""
    from drsearch.inspect.dashboard import serve
    from drsearch.search.database import make_storage, masked_url, open_existing

    cfg = _open_study(study, storage, run_root, smoke).config
    open_existing(cfg, study)  # one line, and no new database, when it has not run
    serve(
        make_storage(cfg.storage_url()),
        cfg.artifact_dir.resolve(),
        f"{cfg.name} ({masked_url(cfg.storage_url())})",
        host,
        port,
        lambda line, warning: click.echo(line, err=warning),
    )


@cli.command()
@click.argument("target", type=click.Path(path_type=Path), metavar="RUN_DIR|STUDY.yaml")
@click.option("--trial", type=click.IntRange(min=0), help="With a study file: the trial number.")
@_smoke_options
def diagnose(target: Path, trial: int | None, run_root: Path | None, smoke: bool) -> None:
    """Say, with numbers, what a run's records show went wrong (or that it is healthy)."""
    from drsearch.inspect.diagnose import diagnose as run_diagnosis

    run_dir = target
    if target.is_file():
        if trial is None:
            raise UserError(f"{target}: a study file needs --trial N")
        from drsearch.search.export import select_trial

        chosen = select_trial(_open_study(target, None, run_root, smoke), str(trial), False)
        run_dir = Path(str(chosen.user_attrs.get("run_dir", "")))
        if not (run_dir / "metrics.jsonl").is_file() and chosen.user_attrs.get("fail_reason"):
            raise UserError(
                f"trial {trial} failed before it trained an epoch, so there is nothing to "
                f"diagnose: {chosen.user_attrs['fail_reason']}"
            )
    console = Console()
    colours = {"high": "red", "medium": "yellow", "low": "cyan", "info": "green"}
    for f in run_diagnosis(run_dir):
        console.print(f"[bold {colours[f.severity]}]{f.severity.upper():<6}[/] [bold]{f.title}[/]")
        console.print(f"       evidence: {f.evidence}", highlight=False)
        console.print(f"       change:   {f.advice}", highlight=False)
