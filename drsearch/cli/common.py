"""What every command shares: the group, one-line errors (exit code 2) and common options."""

from __future__ import annotations

import shlex
from pathlib import Path
from typing import Any

import click

from drsearch.errors import DrsearchError, NoWinner, StudyInterrupted


class UserError(click.ClickException):
    """A user mistake, shown as one ``Error: ...`` line with exit code 2."""

    exit_code = 2


class NoWinnerExit(UserError):
    """The study names no winner: one line, exit code 3 (an outcome, not bad input)."""

    exit_code = 3


class _Group(click.Group):
    """Turns every ``DrsearchError`` into a one-line error instead of a traceback (unless
    ``--debug`` or ``DRSEARCH_DEBUG=1``; ``NoWinner``: exit code 3), and an interrupted study
    into exit code 130."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except DrsearchError as exc:
            if ctx.meta.get("drsearch.debug"):
                raise
            raise (NoWinnerExit if isinstance(exc, NoWinner) else UserError)(str(exc)) from None
        except StudyInterrupted as exc:
            click.echo(str(exc), err=True)
            ctx.exit(130)


def _overrides(pairs: tuple[str, ...]) -> dict[str, Any]:
    from drsearch.config import parse_scalar

    out = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise UserError(f"--set expects KEY=VALUE (e.g. optim.lr=3e-4), got {pair!r}")
        out[key.strip()] = parse_scalar(value, key.strip())
    return out


_recipe_arg = click.argument(
    "recipe", type=click.Path(path_type=Path, dir_okay=False), metavar="RECIPE.yaml"
)


_set_opt = click.option(
    "--set",
    "sets",
    multiple=True,
    metavar="KEY=VALUE",
    help="Override a recipe key, e.g. --set optim.lr=3e-4 (repeatable).",
)


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="drsearch")
@click.option(
    "--debug",
    is_flag=True,
    envvar="DRSEARCH_DEBUG",
    help="Show the traceback behind a one-line error (also DRSEARCH_DEBUG=1).",
)
@click.pass_context
def cli(ctx: click.Context, debug: bool) -> None:
    """drsearch: train and tune diabetic-retinopathy graders (ICDR grades 0-4).

    Start with `drsearch run studies/demo.yaml` (or `make demo`); `drsearch COMMAND --help`
    explains each command.
    """
    ctx.meta["drsearch.debug"] = debug


_storage_opt = click.option(
    "--storage",
    envvar="DRSEARCH_STORAGE",
    show_envvar=True,
    help="SQLAlchemy URL of the Optuna storage (default: the study's, a SQLite file).",
)


def _remember_study_name(ctx: click.Context, _: Any, value: str | None) -> None:
    if value:
        ctx.meta["drsearch.study_name"] = value


def _smoke_options(command: Any) -> Any:
    """``--smoke``, ``--run-root`` and ``--study-name`` for commands that open a study's
    results (``--study-name`` reaches ``_open_study`` through the context: a study run with
    ``drsearch run --study-name`` is opened the same way)."""
    command = click.option(
        "--study-name",
        expose_value=False,
        callback=_remember_study_name,
        help="Open the study of this name (as run with drsearch run --study-name).",
    )(command)
    command = click.option(
        "--smoke", is_flag=True, help="Open the study's smoke version (<run_root>/smoke/)."
    )(command)
    return click.option(
        "--run-root", type=click.Path(path_type=Path, file_okay=False), help="Override run_root."
    )(command)


def _open_study(
    study: Path,
    storage: str | None,
    run_root: Path | None,
    smoke: bool,
    overrides: dict[str, Any] | None = None,
    use_gpu: bool = False,
    recipe_overrides: dict[str, Any] | None = None,
) -> Any:
    """The study file with CLI overrides; with ``smoke``, its smoke version."""
    from drsearch.config.study import load_study

    current = click.get_current_context(silent=True)
    if smoke and current is not None:
        from click.core import ParameterSource

        if current.get_parameter_source("storage") == ParameterSource.ENVIRONMENT:
            storage = None  # DRSEARCH_STORAGE names the real study; a smoke run keeps its own
    if smoke and storage:
        raise UserError("--smoke keeps its own SQLite file under <run_root>/smoke/; drop --storage")
    named = {} if current is None else {"name": current.meta.get("drsearch.study_name")}
    loaded = load_study(
        study,
        {
            **named,
            **(overrides or {}),
            "storage": storage,
            "run_root": str(run_root) if run_root else None,
        },
        recipe_overrides,
    )
    if smoke:
        from drsearch.search.smoke import smoke_study

        loaded = smoke_study(loaded, use_gpu=use_gpu)
    return loaded


def study_args(
    study: Path | str,
    smoke: bool = False,
    run_root: Path | None = None,
    storage: str | None = None,
    study_name: str | None = None,
) -> str:
    """The study file and the options that name this study, as a printed command repeats them,
    each quoted for a POSIX shell (a path with a space stays one argument). ``--study-name``
    defaults to the one this command was given. A storage URL is repeated as given unless
    DRSEARCH_STORAGE gave it (then it still does) or it holds a secret, which is never
    printed: then ``--storage "$DRSEARCH_STORAGE"`` (``storage_note`` says to set it)."""
    current = click.get_current_context(silent=True)
    if study_name is None and current is not None:
        study_name = current.meta.get("drsearch.study_name")
    args = shlex.quote(str(study)) + (" --smoke" if smoke else "")
    for flag, value in (("--run-root", run_root), ("--study-name", study_name)):
        if value:
            args += f" {flag} {shlex.quote(str(value))}"
    if storage and not _storage_from_env(current):
        from drsearch.search.database import url_secrets

        secret = bool(url_secrets(storage))
        args += ' --storage "$DRSEARCH_STORAGE"' if secret else f" --storage {shlex.quote(storage)}"
    return args


def storage_note(storage: str | None) -> str:
    """What a printed command with ``--storage "$DRSEARCH_STORAGE"`` needs first."""
    if not storage or _storage_from_env(click.get_current_context(silent=True)):
        return ""
    from drsearch.search.database import url_secrets

    if not url_secrets(storage):
        return ""
    return (
        " (first `export DRSEARCH_STORAGE=...`, the storage URL you gave: its password is "
        "never printed)"
    )


def _storage_from_env(ctx: click.Context | None) -> bool:
    from click.core import ParameterSource

    try:
        return (
            ctx is not None and ctx.get_parameter_source("storage") == ParameterSource.ENVIRONMENT
        )
    except Exception:  # noqa: BLE001 - a command without --storage
        return False


def print_no_winner(study: Any, command: str) -> Any:
    """Say why the study names no winner (``search.verdict.no_winner``): what came closest
    and the next steps that make sense; the verdict (``None`` when it names one)."""
    from drsearch.search.verdict import no_winner

    verdict = no_winner(study, command)
    if verdict is None:
        return None
    click.echo(f"no winner: {verdict.why}")
    if verdict.closest:
        click.echo(f"  closest: {verdict.closest}")
    if verdict.next_steps:
        click.echo("what to try:")
        width = max(len(what) for what, _ in verdict.next_steps)
        for what, why in verdict.next_steps:
            click.echo(f"  {what:<{width}}  # {why}")
    return verdict
