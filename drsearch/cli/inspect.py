"""Commands that look at results: ``report``, ``dashboard``, ``diagnose``, ``trials``,
``best``, and ``sync`` (a study's tracked runs brought in line with it)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from drsearch.cli.common import (
    UserError,
    _open_study,
    _smoke_options,
    _storage_opt,
    cli,
    print_no_winner,
    study_args,
)
from drsearch.fmt import num, short


@cli.command()
@click.argument("study", type=click.Path(path_type=Path, dir_okay=False), metavar="STUDY.yaml")
@click.option(
    "--out",
    type=click.Path(path_type=Path, file_okay=False),
    help="Folder for report.html (default: reports/<study name>/).",
)
@_storage_opt
@_smoke_options
def report(
    study: Path, out: Path | None, storage: str | None, run_root: Path | None, smoke: bool
) -> None:
    """Write a self-contained HTML report of a study (opens offline)."""
    from drsearch.inspect.report.plots import write_report
    from drsearch.inspect.report.records import build_records
    from drsearch.search.database import open_existing
    from drsearch.search.selection import FINALISTS_ATTR
    from drsearch.search.verdict import study_best

    loaded = _open_study(study, storage, run_root, smoke)
    cfg = loaded.config
    opened = open_existing(cfg, study)
    default = Path("reports") / (f"{cfg.name}-smoke" if smoke else cfg.name)
    chosen = study_best(opened)
    crowned = chosen.trial.number if chosen.source == "finalists" and chosen.trial else None
    record = opened.user_attrs.get(FINALISTS_ATTR)
    if chosen.note:
        click.echo(f"Warning: {chosen.note}", err=True)
    records = build_records(
        loaded, opened, crowned, record, no_winner=chosen.source == "finalists" and not crowned
    )
    path = write_report(records, opened, out or default)
    click.echo(f"report of study {cfg.name} -> {path}")
    from drsearch.search.tracking import sync_study

    def warn(line: str) -> None:
        click.echo(f"Warning: {line}", err=True)

    try:  # its tracked runs caught up with it (what a run left behind): one line if they were not
        sync_study(loaded, study, warn, quiet=False)
    except OSError as exc:  # the study's lock file cannot be made (a read-only run root)
        warn(f"its MLflow/W&B runs were not brought in line with it ({exc})")


@cli.command()
@click.argument("study", type=click.Path(path_type=Path, dir_okay=False), metavar="STUDY.yaml")
@_storage_opt
@_smoke_options
def sync(study: Path, storage: str | None, run_root: Path | None, smoke: bool) -> None:
    """Bring the study's MLflow and W&B runs in line with the study (and its finalist
    stage's): each trial's run made or ended as the study says, the epochs it lacks
    logged, the study's run ended when nothing runs. Prints what it fixed; exit code 1 when
    a tracking store could not be reached (the next run, report or sync tries again)."""
    from drsearch.search.tracking import sync_study

    loaded = _open_study(study, storage, run_root, smoke)
    results = sync_study(loaded, study, lambda line: None)  # each result says it all below
    if not results:
        raise UserError(
            f"{study}: study {loaded.config.name!r} is tracked in neither MLflow nor W&B: add "
            "tracking: {mlflow: {}} (or wandb) to it, or set DRSEARCH_MLFLOW_URI"
        )
    behind = False
    for name, backend, where, result in results:
        if isinstance(result, str):
            behind = True
            click.echo(f"{name}: {backend} at {where}: still behind the study ({result})")
        elif not result:
            click.echo(f"{name}: {backend} at {where}: in line with the study, nothing to fix")
        else:
            click.echo(f"{name}: {backend} at {where}: {len(result)} run(s) brought in line")
            for fix in result:
                click.echo(f"  {fix}")
    if behind:
        raise SystemExit(1)


@cli.command()
@click.argument("study", type=click.Path(path_type=Path, dir_okay=False), metavar="STUDY.yaml")
@click.option(
    "--host",
    default="127.0.0.1",
    show_default=True,
    help="Interface to bind; anything but loopback exposes the study to the network.",
)
@click.option("--port", default=8080, show_default=True, type=click.IntRange(1, 65535))
@click.option("--verbose", is_flag=True, help="Log every HTTP request the server answers.")
@_storage_opt
@_smoke_options
def dashboard(
    study: Path,
    host: str,
    port: int,
    verbose: bool,
    storage: str | None,
    run_root: Path | None,
    smoke: bool,
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
        verbose,
    )


@cli.command()
@click.argument("target", type=click.Path(path_type=Path), metavar="RUN_DIR|STUDY.yaml")
@click.option(
    "--trial", help="With a study file: a trial number, or 'best' (the best feasible trial)."
)
@_storage_opt
@_smoke_options
def diagnose(
    target: Path, trial: str | None, storage: str | None, run_root: Path | None, smoke: bool
) -> None:
    """Say, with numbers, what a run's records show went wrong (or that it is healthy)."""
    from drsearch.inspect.diagnose import diagnose as run_diagnosis

    run_dir = target
    if target.is_file():
        if trial is None:
            raise UserError(f"{target}: a study file needs --trial N (or --trial best)")
        from drsearch.search.export import select_trial

        chosen = select_trial(_open_study(target, storage, run_root, smoke), trial, False)
        run_dir = Path(str(chosen.user_attrs.get("run_dir", "")))
        if not (run_dir / "metrics.jsonl").is_file() and chosen.user_attrs.get("fail_reason"):
            raise UserError(
                f"trial {chosen.number} failed before it trained an epoch, so there is nothing to "
                f"diagnose: {chosen.user_attrs['fail_reason']}"
            )
    from drsearch.cli.progress import stderr_console

    console = stderr_console(stderr=False)
    colours = {"high": "red", "medium": "yellow", "low": "cyan", "info": "green"}
    for f in run_diagnosis(run_dir):
        console.print(f"[bold {colours[f.severity]}]{f.severity.upper():<6}[/] [bold]{f.title}[/]")
        console.print(f"       evidence: {f.evidence}", highlight=False)
        console.print(f"       change:   {f.advice}", highlight=False)


@cli.command()
@click.argument("study", type=click.Path(path_type=Path, dir_okay=False), metavar="STUDY.yaml")
@click.option(
    "--sort",
    type=click.Choice(["number", "value", "duration"]),
    default="number",
    show_default=True,
    help="Order of the rows (value: best first).",
)
@click.option(
    "--format",
    "as_format",
    type=click.Choice(["table", "json"]),
    default="table",
    show_default=True,
    help="json: one object per trial, for scripts.",
)
@_storage_opt
@_smoke_options
def trials(
    study: Path,
    sort: str,
    as_format: str,
    storage: str | None,
    run_root: Path | None,
    smoke: bool,
) -> None:
    """List a study's trials: state, value, feasibility, constraints, parameters, time."""
    import json

    from drsearch.inspect.trials import trial_lines
    from drsearch.search.database import open_existing

    cfg = _open_study(study, storage, run_root, smoke).config
    lines = trial_lines(open_existing(cfg, study), sort)
    if as_format == "json":
        click.echo(json.dumps([line.as_json() for line in lines], indent=2))
        return
    from drsearch.cli.progress import stderr_console

    stderr_console(stderr=False).print(trials_table(cfg.name, lines))


def trials_table(name: str, lines: list[Any]) -> Any:
    """The trials as a rich table; every cell is text, never markup (a note reads "[pruned at
    epoch 2]", which rich would otherwise swallow as a style tag)."""
    from rich.markup import escape
    from rich.table import Table

    table = Table(title=f"study {escape(name)}: {len(lines)} trials", title_justify="left")
    for column in ("#", "state", "value", "feasible", "short by (std. errors)", "epochs", "time"):
        table.add_column(column, justify="right" if column in ("#", "value", "epochs") else "left")
    table.add_column("parameters / note", overflow="fold")
    for r in lines:
        missed = [f"{k} {v:.2f}" for k, v in r.shortfalls.items() if v > 0]
        missed += ["below the trivial model"] if r.below_trivial else []
        short_by = ", ".join(missed) or ("-" if r.feasible is None else "none")
        feasible = {True: "yes", False: "no", None: "-"}[r.feasible]
        params = ", ".join(f"{k}={short(v)}" for k, v in r.params.items())
        table.add_row(
            str(r.number),
            r.state.lower(),
            num(r.value, 4),
            feasible,
            short_by,
            "-" if r.epochs is None else str(r.epochs),
            "-" if r.seconds is None else f"{r.seconds:.0f}s",
            escape(params + (f"  [{r.note}]" if r.note else "")),
        )
    return table


@cli.command()
@click.argument("study", type=click.Path(path_type=Path, dir_okay=False), metavar="STUDY.yaml")
@_storage_opt
@_smoke_options
def best(study: Path, storage: str | None, run_root: Path | None, smoke: bool) -> None:
    """Show the study's best trial (the crowned finalist once a finalist stage has run, else
    the best feasible trial): value, medical-grade figures, parameters, where it is."""
    from drsearch.inspect.trials import trial_line
    from drsearch.search.database import open_existing
    from drsearch.search.selection import FINALISTS_ATTR
    from drsearch.search.verdict import study_best

    cfg = _open_study(study, storage, run_root, smoke).config
    opened = open_existing(cfg, study)
    chosen = study_best(opened)
    record = opened.user_attrs.get(FINALISTS_ATTR)
    if chosen.note:
        click.echo(f"Warning: {chosen.note}", err=True)
    if record is not None:
        from drsearch.cli.confirm import print_finalists

        print_finalists(record)
    trial = chosen.trial
    if trial is None:
        verdict = print_no_winner(opened, study_args(study, smoke, run_root))
        from drsearch.errors import NoWinner

        raise NoWinner(f"{study}: study {cfg.name!r} names no winner: {verdict.why}")
    r = trial_line(trial)
    what = "crowned finalist" if chosen.source == "finalists" else "best feasible trial"
    click.echo(f"{what} of {cfg.name}: trial {r.number}, search value {num(r.value, 4)}")
    click.echo(
        "  "
        + ", ".join(f"{k} {num(v)}" for k, v in r.metrics.items())
        + f" (best epoch {r.best_epoch} of {r.epochs})"
    )
    click.echo("  " + ", ".join(f"{k}={short(v)}" for k, v in r.params.items()))
    click.echo(f"  run folder: {trial.user_attrs.get('run_dir')}")
    if chosen.source == "finalists":  # what ships is what was certified (search.shipping)
        click.echo(
            f"  export what was certified (its confirmation models, one ensemble): drsearch "
            f"export {study_args(study, smoke, run_root)} -o recipes/"
            f"{cfg.name}{'-smoke' if smoke else ''}-best.yaml"
        )
    else:
        click.echo(
            f"  export it: drsearch export {study_args(study, smoke, run_root)} --trial "
            f"{r.number} -o recipes/NAME.yaml"
        )
