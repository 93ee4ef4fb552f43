"""``drsearch predict``: grade new images with an exported recipe (and weights) or ensemble."""

from __future__ import annotations

import time
from collections import Counter
from pathlib import Path

import click

from drsearch.cli.common import UserError, cli
from drsearch.fmt import filename


@cli.command()
@click.argument("target", type=click.Path(path_type=Path, dir_okay=False), metavar="MODEL.yaml")
@click.argument("images", type=click.Path(path_type=Path), metavar="IMAGES")
@click.option(
    "--weights",
    type=click.Path(path_type=Path, dir_okay=False, exists=True),
    help="The weights drsearch export --weights wrote for the recipe (default: the .pt beside it).",
)
@click.option(
    "-o",
    "--out",
    type=click.Path(path_type=Path, dir_okay=False),
    help="Predictions CSV to write (default: predictions-<MODEL>.csv here). An existing file "
    "is replaced only if drsearch predict wrote it.",
)
@click.option(
    "--image-dir",
    type=click.Path(path_type=Path, file_okay=False, exists=True),
    help="With a CSV: the folder its image names are relative to (default: the CSV's folder).",
)
@click.option(
    "--batch-size", type=click.IntRange(min=1), help="Images per forward pass (default: the "
    "recipe's evaluation batch)."
)  # fmt: skip
@click.option(
    "--device",
    type=click.Choice(["auto", "cpu", "cuda"]),
    default="auto",
    show_default=True,
    help="auto: a GPU when there is one.",
)
def predict(
    target: Path,
    images: Path,
    weights: Path | None,
    out: Path | None,
    image_dir: Path | None,
    batch_size: int | None,
    device: str,
) -> None:
    """Grade new fundus images (IMAGES: a folder, searched recursively, or a CSV with a path,
    image or id_code column) with an exported recipe and its weights, or an exported ensemble.

    The images get what the held-out test set got in drsearch evaluate: the recipe's
    preprocessing and size, its TTA views and temperature, and the operating points chosen on
    validation for the referable (grade >= 2) and vision-threatening (grade >= 3) calls.
    Writes one row per image: id, path, grade, the five grade probabilities, P(grade >= k)
    and the call of each endpoint; an image that cannot be read (not a regular file, over
    the size limits, truncated, damaged) gets its error instead, and one a grader should not
    grade (no fundus, a small fundus, a size out of range) its flags, without a grade.
    """
    import torch

    from drsearch.cli.progress import stderr_console
    from drsearch.data.decode import quiet_opencv
    from drsearch.inspect.predict import find_images, load_grader, predict_images, write_predictions

    if device == "cuda" and not torch.cuda.is_available():
        raise UserError("--device cuda: this machine has no CUDA GPU; use --device cpu")
    if image_dir is not None and images.is_dir():
        raise UserError("--image-dir is for a CSV of images; IMAGES is a folder")
    chosen = "cuda" if device == "auto" and torch.cuda.is_available() else device
    chosen = "cpu" if chosen == "auto" else chosen
    grader = load_grader(target, weights)
    found = find_images(images, image_dir)
    quiet_opencv()  # a damaged file's problem is in its row and the summary
    out = out or Path(f"predictions-{grader.name}.csv")
    console = stderr_console()
    for note in grader.notes:
        console.print(f"Warning: {note}", markup=False, highlight=False)
    start = time.perf_counter()
    with console.status(f"grading {len(found)} images") as status:

        def progress(done: int, total: int) -> None:
            status.update(f"graded {done}/{total} images")

        result = predict_images(grader, found, batch_size, chosen, progress)
    seconds = time.perf_counter() - start
    write_predictions(result, grader, out)
    graded = int(result.usable.sum())
    counts = [int((result.grades == g).sum()) for g in range(5)]
    calls = ", ".join(f"{name} {int(c.sum())} of {graded}" for name, c in result.calls.items())
    rule = (
        "; ".join(
            f"{name}: P(grade >= {p['grade_at_least']}) >= {p['threshold']:.4f}"
            for name, p in grader.operating_points.items()
        )
        or "the predicted grade"
    )
    click.echo(
        f"graded {graded} of {len(found)} images with {grader.name} "
        f"({len(grader.members)} model{'s' if len(grader.members) > 1 else ''}, views "
        f"{', '.join(grader.views)}) in {seconds:.1f} s ({graded / max(seconds, 1e-9):.1f} "
        f"images/s on {chosen})"
    )
    click.echo(f"grades 0-4: {' / '.join(map(str, counts))}; calls: {calls} (by {rule})")
    flagged = result.flagged
    if flagged:
        kinds = Counter(f for fs in result.flags for f in fs)
        what = "image was" if len(flagged) == 1 else "images were"
        click.echo(
            f"Warning: {len(flagged)} {what} not graded, flagged as images a grader should "
            f"not grade ({', '.join(f'{k} {v}' for k, v in sorted(kinds.items()))}; see the "
            f"flags column): {_some(flagged)}",
            err=True,
        )
    bad = result.unreadable
    if bad:
        kinds = Counter(e for e in result.errors if e)
        what = "image could not be read" if len(bad) == 1 else "images could not be read"
        reasons = "; ".join(f"{k}: {v}" for k, v in kinds.most_common(3))
        reasons += f"; {len(kinds) - 3} other reasons" if len(kinds) > 3 else ""
        click.echo(f"Warning: {len(bad)} {what} ({reasons}; listed in the CSV with their "
                   f"error): {_some(bad)}", err=True)  # fmt: skip
    click.echo(f"predictions -> {filename(out)}")


#: Control characters in a name (a newline, a tab) shown escaped, so a warning stays one line.
_CONTROL = {c: f"\\x{c:02x}" for c in [*range(32), 127]}


def _some(paths: list[Path]) -> str:
    shown = ", ".join(filename(p).translate(_CONTROL) for p in paths[:5])
    return shown + (f" and {len(paths) - 5} more" if len(paths) > 5 else "")
