"""``drsearch data``: describe a recipe's data, or synthesize a demo set."""

from __future__ import annotations

from pathlib import Path

import click
from rich.table import Table

from drsearch.cli.common import _overrides, _recipe_arg, _set_opt, cli


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
    from drsearch.cli.progress import stderr_console

    console = stderr_console(stderr=False)
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
