"""The ``drsearch`` command line: thin commands that parse, call and print."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path
from typing import Any

import click
from rich.console import Console
from rich.table import Table

from drsearch.errors import DrsearchError


class UserError(click.ClickException):
    """A user mistake, shown as one ``Error: ...`` line with exit code 2."""

    exit_code = 2


class _Group(click.Group):
    """Turns every ``DrsearchError`` into a one-line error instead of a traceback."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except DrsearchError as exc:
            raise UserError(str(exc)) from None


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
def cli() -> None:
    """drsearch: train and tune diabetic-retinopathy graders (ICDR grades 0-4)."""


@cli.command()
@_recipe_arg
@click.option(
    "--out",
    type=click.Path(path_type=Path, file_okay=False),
    help="Run folder (default: runs/<recipe name>).",
)
@click.option("--resume", is_flag=True, help="Continue the run in --out from its last checkpoint.")
@click.option("--overwrite", is_flag=True, help="Replace an existing run in --out.")
@click.option("--epochs", type=click.IntRange(min=1), help="Override train.epochs.")
@_set_opt
@click.option("--quiet", is_flag=True, help="No progress display.")
@click.option(
    "--strict",
    is_flag=True,
    help="For a pinned recipe: refuse to train when versions or data differ.",
)
def train(
    recipe: Path,
    out: Path | None,
    resume: bool,
    overwrite: bool,
    epochs: int | None,
    sets: tuple[str, ...],
    quiet: bool,
    strict: bool,
) -> None:
    """Train the recipe; write config, metrics, predictions and checkpoints to the run folder."""
    from drsearch.config import load_recipe
    from drsearch.export import drift
    from drsearch.progress import RichTrainProgress
    from drsearch.train import fit

    overrides = _overrides(sets)
    if epochs is not None:
        overrides["train.epochs"] = epochs
    config = load_recipe(recipe, overrides)
    differences = drift(config)
    if differences and strict:
        raise UserError(
            f"{recipe}: the pinned recipe does not match ({len(differences)}): "
            + "; ".join(differences)
        )
    for difference in differences:
        click.echo(f"Warning: {recipe}: {difference}; results may differ from the trial", err=True)
    run_dir = out or Path("runs") / recipe.stem
    _check_run_dir(run_dir, resume, overwrite)
    if quiet:
        result = fit(config, run_dir=run_dir, resume=resume)
    else:
        with RichTrainProgress() as progress:
            result = fit(config, run_dir=run_dir, resume=resume, progress=progress)
    best = result.best
    click.echo(
        f"best epoch {result.best_epoch}/{result.epochs_completed} ({result.stopped}): "
        f"accuracy {_num(best['accuracy'])}, qwk {_num(best['qwk'])}, "
        f"sensitivity severe NPDR {_num(best['sensitivity'][3])}, "
        f"PDR {_num(best['sensitivity'][4])}; {result.wall_seconds:.1f}s -> {run_dir}"
    )
    click.echo(_parameter_line(result.parameters))


def _parameter_line(counts: dict[str, Any]) -> str:
    line = (
        f"trainable parameters: {counts['trainable']:,} of {counts['total']:,} "
        f"({100 * counts['trainable_fraction']:.2f}%)"
    )
    if counts.get("lora"):
        line += f"; LoRA adapters {counts['lora']:,}, the rest frozen except the classifier"
    return line


def _num(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f}"


def _check_run_dir(run_dir: Path, resume: bool, overwrite: bool) -> None:
    from drsearch.train.outputs import is_run_folder

    has_run = (run_dir / "metrics.jsonl").exists() or (run_dir / "checkpoints").exists()
    if resume and overwrite:
        raise UserError("--resume and --overwrite contradict each other; pick one")
    if resume and not has_run:
        raise UserError(f"{run_dir}: no run to resume; drop --resume or point --out at a run")
    if has_run and not resume:
        if not overwrite:
            raise UserError(
                f"{run_dir}: already holds a run; pass --resume to continue it, "
                "--overwrite to replace it, or --out for a new folder"
            )
        if not is_run_folder(run_dir):
            raise UserError(
                f"{run_dir}: --overwrite only deletes run folders drsearch wrote, and this one "
                "holds other files too; delete it yourself or pick another --out"
            )
        shutil.rmtree(run_dir)


@cli.command()
@_recipe_arg
@click.option(
    "--steps-per-epoch",
    type=click.IntRange(1, 1_000_000),
    help="Optimizer steps per epoch (default: computed from the recipe's data).",
)
@click.option(
    "--csv",
    "as_csv",
    is_flag=True,
    help="One row per optimizer step and group: epoch,step,group,lr.",
)
@_set_opt
def lr(recipe: Path, steps_per_epoch: int | None, as_csv: bool, sets: tuple[str, ...]) -> None:
    """Show the LR of every parameter group at every epoch, without training.

    Given a study file, shows its base recipe's schedule (the search varies it per trial)."""
    from drsearch.config import load_recipe, read_yaml
    from drsearch.config.loading import is_study_file, recipe_with_overrides
    from drsearch.lr_view import lr_csv, lr_summary, steps_from_data

    if is_study_file(read_yaml(recipe)):
        from drsearch.study import load_study

        base = load_study(recipe).recipe.model_dump(mode="json")
        config = recipe_with_overrides(base, _overrides(sets), f"{recipe}: recipe", "--set")
    else:
        config = load_recipe(recipe, _overrides(sets))
    spe = steps_per_epoch or steps_from_data(config)
    if as_csv:
        sys.stdout.write(lr_csv(config, spe))
        return
    table, notes = lr_summary(config, spe)
    console = Console()
    rich_table = Table(title=f"{recipe}: LR per group ({spe} optimizer steps per epoch)")
    for column in table[0]:
        rich_table.add_column(column, justify="right")
    for row in table[1:]:
        rich_table.add_row(*row)
    console.print(rich_table)
    for note in notes:
        console.print(f"- {note}")


@cli.command()
@click.argument("study", type=click.Path(path_type=Path, dir_okay=False), metavar="STUDY.yaml")
@click.option(
    "--n-trials",
    type=click.IntRange(min=1),
    help="Override budget.n_trials (with --smoke: smoke.n_trials).",
)
@click.option("--storage", help="SQLAlchemy URL of the Optuna storage (default: SQLite file).")
@click.option(
    "--executor",
    type=click.Choice(["ray", "local"]),
    help="ray (default): Ray Tune with ASHA; local: in-process, for debugging.",
)
@click.option(
    "--max-concurrent", type=click.IntRange(min=1), help="Override resources.max_concurrent."
)
@click.option("--study-name", help="Override the study name.")
@click.option("--ray-address", help="Join an existing Ray cluster (e.g. 10.0.0.1:6379).")
@click.option(
    "--run-root",
    type=click.Path(path_type=Path, file_okay=False),
    help="Override run_root (trial folders and the default SQLite file).",
)
@click.option(
    "--smoke",
    is_flag=True,
    help="Wiring check: tiny model, a few synthetic images, 2 epochs, 2 trials, same code "
    "paths; in <run_root>/smoke/, replaced each time.",
)
@click.option(
    "--retry-failed",
    is_flag=True,
    help="Run failed and interrupted trials again with the same parameters, continuing from "
    "their checkpoints when the recipe is unchanged.",
)
@click.option("--quiet", is_flag=True, help="No live progress view.")
def run(
    study: Path,
    n_trials: int | None,
    storage: str | None,
    executor: str | None,
    max_concurrent: int | None,
    study_name: str | None,
    ray_address: str | None,
    run_root: Path | None,
    smoke: bool,
    retry_failed: bool,
    quiet: bool,
) -> None:
    """Run (or continue) a study until its budget is spent.

    The budget (budget.n_trials, or --n-trials) is stored with the study: several runners
    started on one study together run exactly that many trials.
    """
    import torch

    from drsearch.runners import run_study

    overrides = {
        "smoke.n_trials" if smoke else "budget.n_trials": n_trials,
        "executor": executor,
        "resources.max_concurrent": max_concurrent,
        "name": study_name,
        "ray.address": ray_address,
    }
    use_gpu = smoke and torch.cuda.is_available()
    loaded = _open_study(study, storage, run_root, smoke, overrides, use_gpu)
    if smoke:
        _reset_smoke(loaded)
    if quiet:
        summary = run_study(loaded, retry_failed=retry_failed)
    else:
        from drsearch.progress import RichStudyProgress

        with RichStudyProgress(loaded.config.budget.n_trials) as progress:
            summary = run_study(loaded, progress, retry_failed=retry_failed)
    _print_summary(summary)
    if summary.counts.counted and summary.counts.counted == summary.counts.failed:
        raise click.ClickException(f"every trial failed; first: {summary.first_failure}")


@cli.command()
@click.argument("study", type=click.Path(path_type=Path, dir_okay=False), metavar="STUDY.yaml")
@click.option(
    "--samples",
    default=20,
    show_default=True,
    type=click.IntRange(1, 10_000),
    help="How many configurations of the search space to draw and validate.",
)
def check(study: Path, samples: int) -> None:
    """Check a study before paying for it: the study file, its recipe and search space, the
    data and weights it names, and a sample of the configurations it will try. Writes nothing.
    """
    from drsearch.study import check_inputs, load_study, sample_problems

    loaded = load_study(study)
    check_inputs(loaded, generate=False)
    problems = sample_problems(loaded, samples)
    if problems:
        raise UserError(
            f"{len(problems)} of {samples} sampled configurations are impossible recipes; "
            f"first: {problems[0]}"
        )
    cfg, r = loaded.config, loaded.recipe
    click.echo(
        f"{study}: study {cfg.name} OK - {r.model.name}, {len(loaded.space)} searched keys, "
        f"{samples} sampled configurations all valid; budget {cfg.budget.n_trials} trials of "
        f"up to {loaded.max_epochs} epochs, {cfg.executor} executor"
    )


def _reset_smoke(small: Any) -> None:
    """Start the smoke study afresh (data generated once, before any trial) and say so."""
    from drsearch.data.sources import ensure_synthetic
    from drsearch.io import owned_dir, remove_owned

    cfg, recipe = small.config, small.recipe
    folder = owned_dir(cfg.run_root, cfg.run_root.parent, "smoke runs")  # <run_root>/smoke
    for stale in (cfg.study_dir, cfg.artifact_dir):
        remove_owned(stale, folder)
    for made in (f"{cfg.name}.db", f"{cfg.name}.db.lock"):
        (folder / made).unlink(missing_ok=True)
    ensure_synthetic(recipe.data)
    click.echo(
        f"smoke run of {small.path}: {recipe.model.name} at {recipe.data.sizes()} px, "
        f"{recipe.data.synthetic.n} synthetic images, {recipe.train.epochs} epochs, "
        f"{cfg.budget.n_trials} trials on {'GPU' if cfg.resources.gpus_per_trial else 'CPU'} "
        f"-> {cfg.run_root}",
        err=True,
    )


def _smoke_options(command: Any) -> Any:
    """``--smoke`` and ``--run-root`` for commands that open a study's results."""
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
) -> Any:
    """The study file with CLI overrides; with ``smoke``, its smoke version."""
    from drsearch.study import load_study

    if smoke and storage:
        raise UserError("--smoke keeps its own SQLite file under <run_root>/smoke/; drop --storage")
    loaded = load_study(
        study,
        {**(overrides or {}), "storage": storage, "run_root": str(run_root) if run_root else None},
    )
    if smoke:
        from drsearch.smoke import smoke_study

        loaded = smoke_study(loaded, use_gpu=use_gpu)
    return loaded


def _print_summary(s: Any) -> None:
    c = s.counts
    click.echo(
        f"study {s.name} ({s.storage}): {c.counted}/{s.n_trials} trials counted - "
        f"{c.complete} complete, {c.pruned} pruned, {c.failed} failed"
        + (f", {c.interrupted} interrupted (not counted)" if c.interrupted else "")
    )
    if s.reaped:
        click.echo(f"marked interrupted: trials {', '.join(map(str, s.reaped))}")
    if s.retried:
        click.echo(f"queued again (--retry-failed): trials {', '.join(map(str, s.retried))}")
    if s.waiting:
        click.echo(
            f"queued but not started, the budget of {s.n_trials} being spent: trials "
            f"{', '.join(map(str, s.waiting))}; raise it with --n-trials to run them"
        )
    if not s.started_trials and c.failed and c.counted >= s.n_trials:
        click.echo(
            f"nothing to run: the budget of {s.n_trials} trials is spent and {c.failed} of them "
            "failed; run them again with --retry-failed, or raise the budget with --n-trials"
        )
    for group in s.duplicates:
        click.echo(
            f"Warning: trials {', '.join(map(str, group))} ran the same parameters", err=True
        )
    if s.runs_dir is not None:
        click.echo(f"trial run folders: {s.runs_dir}")
    if s.started_trials:
        click.echo(
            f"this run: {s.started_trials} trial(s), wall {s.wall_seconds:.1f}s, "
            f"trials' own time {s.trial_seconds:.1f}s"
        )
    if s.best is not None:
        kind = "feasible" if s.best_feasible else "no trial is feasible; best infeasible"
        params = ", ".join(f"{k}={_short(v)}" for k, v in s.best.params.items())
        click.echo(f"best ({kind}): trial {s.best.number}, value {s.best.value:.4f}; {params}")


def _short(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


@cli.command()
@click.argument("study", type=click.Path(path_type=Path, dir_okay=False), metavar="STUDY.yaml")
@click.option(
    "--trial",
    "which",
    default="best",
    show_default=True,
    help="'best' (the best feasible trial) or a trial number.",
)
@click.option(
    "-o",
    "--out",
    required=True,
    type=click.Path(path_type=Path, dir_okay=False),
    help="Where to write the pinned recipe, e.g. recipes/effb2-best.yaml.",
)
@click.option("--storage", help="SQLAlchemy URL of the Optuna storage (default: the study's).")
@_smoke_options
def export(
    study: Path, which: str, out: Path, storage: str | None, run_root: Path | None, smoke: bool
) -> None:
    """Write a trial as a pinned training recipe that `drsearch train` retrains exactly."""
    from drsearch.export import pinned_recipe, select_trial, write_pinned

    loaded = _open_study(study, storage, run_root, smoke)
    trial = select_trial(loaded, which)
    recipe = pinned_recipe(loaded, trial)
    write_pinned(recipe, out)
    value = "n/a" if trial.value is None else f"{trial.value:.4f}"
    click.echo(f"trial {trial.number} ({trial.state.name}, value {value}) -> {out}")


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
    from drsearch.report.plots import write_report
    from drsearch.report.records import build_records
    from drsearch.storage import open_existing

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
    from optuna.artifacts import FileSystemArtifactStore
    from optuna_dashboard import run_server

    from drsearch.storage import make_storage, masked_url, open_existing

    loaded = _open_study(study, storage, run_root, smoke)
    cfg = loaded.config
    open_existing(cfg, study)
    artifacts = cfg.artifact_dir.resolve()
    artifacts.mkdir(parents=True, exist_ok=True)
    if host not in ("127.0.0.1", "localhost", "::1"):
        click.echo(
            f"Warning: serving on {host}: optuna-dashboard has no authentication, so anyone "
            "who can reach this machine on port "
            f"{port} can read and change the study; use the default 127.0.0.1 and an SSH "
            "tunnel to share it safely",
            err=True,
        )
    click.echo(
        f"optuna-dashboard for {cfg.name} ({masked_url(cfg.storage_url())}) at "
        f"http://{host}:{port}/dashboard/ - Ctrl+C to stop"
    )
    run_server(
        make_storage(cfg.storage_url()),
        host=host,
        port=port,
        artifact_store=FileSystemArtifactStore(str(artifacts)),
    )


@cli.command()
@click.argument("target", type=click.Path(path_type=Path), metavar="RUN_DIR|STUDY.yaml")
@click.option("--trial", type=click.IntRange(min=0), help="With a study file: the trial number.")
@_smoke_options
def diagnose(target: Path, trial: int | None, run_root: Path | None, smoke: bool) -> None:
    """Say, with numbers, what a run's records show went wrong (or that it is healthy)."""
    from drsearch.diagnose import diagnose as run_diagnosis

    run_dir = target
    if target.is_file():
        if trial is None:
            raise UserError(f"{target}: a study file needs --trial N")
        from drsearch.export import select_trial

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


@cli.group()
def data() -> None:
    """Datasets: describe a recipe's data, or synthesize a demo set."""


@data.command()
@click.option(
    "--out",
    required=True,
    type=click.Path(path_type=Path, file_okay=False),
    help="Folder to write train.csv and train_images/ into.",
)
@click.option(
    "--n", default=600, show_default=True, type=click.IntRange(min=10), help="Number of images."
)
@click.option(
    "--size",
    default=256,
    show_default=True,
    type=click.IntRange(32, 2048),
    help="Image side in pixels.",
)
@click.option("--seed", default=0, show_default=True, type=int, help="Random seed.")
@click.option(
    "--imbalance",
    default="eyepacs",
    show_default=True,
    type=click.Choice(["eyepacs", "balanced"]),
    help="Grade shares: EyePACS-like 73/7/15/2.5/2.5 % or balanced.",
)
def synth(out: Path, n: int, size: int, seed: int, imbalance: str) -> None:
    """Write a synthetic fundus dataset in the APTOS 2019 layout."""
    from drsearch.data.synth import grade_counts, write_synthetic_dataset

    write_synthetic_dataset(out, n=n, size=size, seed=seed, imbalance=imbalance)
    counts = ", ".join(f"grade {g}: {c}" for g, c in enumerate(grade_counts(n, imbalance)))
    click.echo(f"wrote {n} images ({counts}) to {out}")


@data.command()
@_recipe_arg
@_set_opt
def describe(recipe: Path, sets: tuple[str, ...]) -> None:
    """Counts per grade and split, patients, image sizes, unreadable files, duplicates."""
    from drsearch import GRADES
    from drsearch.config import load_recipe
    from drsearch.data.describe import describe_dataset

    config = load_recipe(recipe, _overrides(sets))
    s = describe_dataset(config.data)
    console = Console()
    table = Table(title=f"{config.data.kind} at {config.data.root}: {s.n_images} images")
    table.add_column("split")
    for g, name in enumerate(GRADES):
        table.add_column(f"{g} {name}", justify="right")
    table.add_column("total", justify="right")
    for split, counts in s.grade_counts.items():
        table.add_row(split, *map(str, counts), str(sum(counts)))
    console.print(table)
    if s.n_patients is not None:
        console.print(f"patients: {s.n_patients} (the split keeps each patient on one side)")
    if s.sizes:
        console.print(
            "image sizes (w x h): " + ", ".join(f"{k} {w}x{h}" for k, (w, h) in s.sizes.items())
        )
    console.print(
        f"unreadable files: {len(s.unreadable)}"
        + (f", e.g. {s.unreadable[0]}" if s.unreadable else "")
    )
    for reason, n in s.skipped.items():
        console.print(f"skipped: {n} x {reason}")
    console.print(
        f"exact duplicates (same bytes): {len(s.duplicate_groups)} group(s), "
        f"{len(s.cross_split_duplicates)} across train/validation"
        + (f", e.g. {' = '.join(s.cross_split_duplicates[0])}" if s.cross_split_duplicates else "")
    )


def main() -> None:
    """Console-script entry point."""
    cli(prog_name="drsearch")


if __name__ == "__main__":
    main()
