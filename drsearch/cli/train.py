"""Commands on one training recipe: ``train`` and ``lr``."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import click
from rich.table import Table

from drsearch.cli.common import (
    UserError,
    _open_study,
    _overrides,
    _recipe_arg,
    _set_opt,
    _smoke_options,
    _storage_opt,
    cli,
)
from drsearch.fmt import num


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
    from drsearch.cli.progress import RichTrainProgress
    from drsearch.config import load_recipe
    from drsearch.search.export import drift
    from drsearch.train import fit
    from drsearch.train.outputs import prepare_run_dir

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
    prepare_run_dir(run_dir, resume, overwrite)
    if quiet:
        result = fit(config, run_dir=run_dir, resume=resume)
    else:
        with RichTrainProgress() as progress:
            result = fit(config, run_dir=run_dir, resume=resume, progress=progress)
    best = result.best
    click.echo(
        f"best epoch {result.best_epoch}/{result.epochs_completed} ({result.stopped}): "
        f"accuracy {num(best['accuracy'])}, qwk {num(best['qwk'])}, "
        f"sensitivity severe NPDR {num(best['sensitivity'][3])}, "
        f"PDR {num(best['sensitivity'][4])}; {result.wall_seconds:.1f}s -> {run_dir}"
    )
    click.echo(_parameter_line(result.parameters))
    if result.skipped:
        counts = ", ".join(f"{n} x {reason}" for reason, n in result.skipped.items())
        click.echo(f"skipped (data.skip_bad): {counts}; the files are listed in run.json")


def _parameter_line(counts: dict[str, Any]) -> str:
    line = (
        f"trainable parameters: {counts['trainable']:,} of {counts['total']:,} "
        f"({100 * counts['trainable_fraction']:.2f}%)"
    )
    if counts.get("lora"):
        line += f"; LoRA adapters {counts['lora']:,}, the rest frozen except the classifier"
    return line


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
@click.option(
    "--trial",
    "which",
    help="With a study file: the schedule trial N (or 'best') ran with, from its config.yaml.",
)
@_set_opt
@_storage_opt
@_smoke_options
def lr(
    recipe: Path,
    steps_per_epoch: int | None,
    as_csv: bool,
    which: str | None,
    sets: tuple[str, ...],
    storage: str | None,
    run_root: Path | None,
    smoke: bool,
) -> None:
    """Show the LR of every parameter group at every epoch, without training.

    Given a study file, shows its base recipe's schedule and the ranges the search varies it
    over; with --trial, the schedule a trial ran with."""
    from drsearch.config import load_recipe, read_yaml
    from drsearch.config.loading import is_study_file, recipe_with_overrides
    from drsearch.inspect.lr import lr_csv, lr_summary, searched_note, steps_from_data

    searched = None
    if is_study_file(read_yaml(recipe)):
        loaded = _open_study(recipe, storage, run_root, smoke)
        if which is not None:
            config = _trial_recipe(loaded, which, _overrides(sets))
        else:
            base = loaded.recipe.model_dump(mode="json")
            config = recipe_with_overrides(base, _overrides(sets), f"{recipe}: recipe", "--set")
            searched = searched_note(loaded.space)
    elif which is not None or smoke:
        raise UserError(f"{recipe}: --trial and --smoke are for a study file; this is a recipe")
    else:
        config = load_recipe(recipe, _overrides(sets))
    spe = steps_per_epoch or steps_from_data(config)
    if as_csv:
        sys.stdout.write(lr_csv(config, spe))
        return
    table, notes = lr_summary(config, spe)
    from drsearch.cli.progress import stderr_console

    console = stderr_console(stderr=False)
    rich_table = Table(title=f"{recipe}: LR per group ({spe} optimizer steps per epoch)")
    for column in table[0]:
        rich_table.add_column(column, justify="right")
    for row in table[1:]:
        rich_table.add_row(*row)
    console.print(rich_table)
    for note in notes + ([searched] if searched else []):
        console.print(f"- {note}", markup=False, highlight=False)


def _trial_recipe(loaded: Any, which: str, sets: dict[str, Any]) -> Any:
    """The recipe trial ``which`` of the study ran with (its run folder's config.yaml)."""
    from drsearch.config import load_recipe
    from drsearch.search.export import select_trial

    trial = select_trial(loaded, which, trained_only=False)
    config = Path(str(trial.user_attrs.get("run_dir", ""))) / "config.yaml"
    if not config.is_file():
        raise UserError(
            f"trial {trial.number}: its run folder has no config.yaml ({config}); it never "
            "started training"
        )
    return load_recipe(config, sets)
