"""``drsearch predict``: grade new fundus images with what ``drsearch export`` wrote.

A grader is an exported (pinned) recipe with its weights, or an exported ensemble. New images
get exactly what the held-out test set got in ``drsearch evaluate``: each member's own
preprocessing at its own image size (``inspect.members``: an ensemble's members may differ in
them), the views its evaluation averaged (TTA), each member's
temperature and grade thresholds, an ensemble's mean probabilities, and the operating points
chosen on validation (``P(grade >= k) >= threshold``) for the referable and vision-threatening
calls. Nothing is refitted on the new images. The probabilities, grades and calls come from
the same functions as the evaluation's (``inspect.evaluate.grade_new_images``,
``combine_members``, ``endpoint_scores``), so the two cannot differ.

Images are decoded in threads and graded in chunks, so memory stays flat over any number of
images; an image that cannot be decoded is listed in the output with its error, never fatal.
"""

from __future__ import annotations

import csv
import io
import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from drsearch.clinical import ENDPOINTS, NUM_CLASSES
from drsearch.errors import ConfigError, DataError
from drsearch.fmt import filename
from drsearch.train.predict import TrainedModel

if TYPE_CHECKING:
    from drsearch.data.decode import Decoded
    from drsearch.inspect.members import Preparation

#: The columns of a predictions file, in order (a file that starts with them was written here).
FIRST_COLUMNS = ("id", "path", "grade")
#: Column names a CSV of images may name its images by (first found wins).
PATH_COLUMNS = ("path", "image", "id_code", "image_id", "filename", "file")
CHUNK = 256  # images decoded and graded at a time
MAX_CSV_BYTES = 256 * 1024**2  # a CSV listing images (a million rows are about 50 MB)


@dataclass
class Grader:
    """What grades: one model or an ensemble, with what its evaluation chose."""

    name: str
    members: list[TrainedModel]
    views: tuple[str, ...]
    #: endpoint -> ``{"grade_at_least": k, "threshold": t}``; empty when none was stored
    operating_points: dict[str, dict[str, Any]]
    notes: list[str] = field(default_factory=list)  # what the user should know about the calls


@dataclass
class Predictions:
    """Every image's row: graded, flagged (not graded) or unreadable, and how calls were made."""

    ids: list[str]
    paths: list[Path]
    probs: np.ndarray  # N x 5 (NaN where not graded)
    grades: np.ndarray  # N (-1 where not graded)
    usable: np.ndarray  # bool N: graded
    calls: dict[str, np.ndarray]  # endpoint -> bool N
    scores: dict[str, np.ndarray]  # endpoint -> P(grade >= k), N
    errors: list[str | None]  # why an image could not be read
    flags: list[tuple[str, ...]]  # why a decoded image was not graded (data/quality.py)

    @property
    def unreadable(self) -> list[Path]:
        return [p for p, e in zip(self.paths, self.errors, strict=True) if e]

    @property
    def flagged(self) -> list[Path]:
        return [p for p, f in zip(self.paths, self.flags, strict=True) if f]


def load_grader(target: Path, weights: Path | None) -> Grader:
    """An exported recipe (with ``weights``: the file ``export --weights`` wrote; by default
    the ``.pt`` beside it) or an exported ensemble file."""
    from drsearch.config.ensemble import is_ensemble_file
    from drsearch.config.loading import is_recipe_file, read_yaml
    from drsearch.inspect.members import ensemble_members, recipe_member

    raw = read_yaml(target)
    if is_ensemble_file(raw):
        if weights is not None:
            raise ConfigError(f"{target}: an ensemble file names its members' weights; drop "
                              "--weights")  # fmt: skip
        members, points, views = ensemble_members(target)
        grader = Grader(target.stem, members, views, {})
        return _with_points(grader, points or {}, target)
    if not is_recipe_file(raw):
        raise ConfigError(
            f"{target}: not an exported recipe or ensemble; predict grades with what drsearch "
            "export wrote (drsearch export STUDY.yaml --weights FILE.pt, or --top-k K)"
        )
    if weights is None:
        weights = target.with_suffix(".pt")
        if not weights.is_file():
            raise ConfigError(
                f"{target}: its weights are not beside it ({weights} not found); give them "
                "with --weights FILE.pt (what drsearch export --weights wrote)"
            )
    member = recipe_member(target, weights)
    evaluation = member.stored or {}
    grader = Grader(target.stem, [member], tuple(evaluation.get("views") or ("identity",)), {})
    return _with_points(grader, evaluation.get("operating_points") or {}, target)


def _with_points(grader: Grader, points: dict[str, Any], target: Path) -> Grader:
    for name, k in ENDPOINTS.items():
        stored = points.get(name) or {}
        if stored.get("threshold") is not None:
            grader.operating_points[name] = {
                "grade_at_least": k,
                "threshold": float(stored["threshold"]),
            }
    if len(grader.operating_points) < len(ENDPOINTS):
        grader.notes.append(
            f"{target} carries no operating points (it was exported before drsearch evaluate "
            "measured it): the calls are the predicted grade >= k, not a threshold chosen on "
            "validation; run drsearch evaluate on the study, then export again"
        )
    for m in grader.members:
        _cuts(m)  # a regression or ordinal head without thresholds: refused before decoding
    return grader


def _temperature(m: TrainedModel) -> float:
    stored = (m.stored or {}).get("temperature")
    return 1.0 if stored is None else float(stored)


def _cuts(m: TrainedModel) -> list[float] | None:
    """A regression or ordinal head's grade thresholds: the recipe's, its evaluation's, or
    those its best epoch was graded with on validation."""
    if m.recipe.model.head == "classification":
        return None
    pinned = m.recipe.pinned
    found = (
        m.recipe.model.thresholds
        or (m.stored or {}).get("grade_thresholds")
        or ((pinned.provenance.get("metrics") or {}).get("thresholds") if pinned else None)
    )
    if not found:
        raise ConfigError(
            f"{m.label}: a {m.recipe.model.head} head needs its grade thresholds and the "
            "recipe carries none; run drsearch evaluate on the study, then export again"
        )
    return [float(t) for t in found]


def find_images(source: Path, image_dir: Path | None = None) -> list[tuple[str, Path]]:
    """``(id, path)`` of every image to grade: the image files under a folder (recursively;
    the id is the path below it without the extension), or the rows of a CSV that names its
    images in one of ``PATH_COLUMNS`` (relative to ``image_dir``, by default the CSV's
    folder; a name without an extension finds ``.png``, ``.jpg`` ...). Anything named like an
    image that is not a folder is listed (a FIFO, device, socket or broken link too: reading
    it then fails with its reason)."""
    from drsearch.data.adapters import IMAGE_SUFFIXES

    if source.is_dir():
        found = sorted(
            p for p in source.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and not p.is_dir()
        )
        if not found:
            raise DataError(
                f"{filename(source)}: no image files ({', '.join(IMAGE_SUFFIXES)}) in this folder "
                "or below it"
            )
        return [(p.relative_to(source).with_suffix("").as_posix(), p) for p in found]
    if source.suffix.lower() != ".csv" and not os.path.lexists(source):
        raise DataError(f"{filename(source)}: no such folder or CSV file of images")
    if source.suffix.lower() != ".csv":
        raise DataError(f"{filename(source)}: give a folder of images or a .csv that lists them")
    base = image_dir or source.parent
    column, rows = _read_csv(source)
    out = []
    for line, name in rows:
        if not name:
            raise DataError(f"{filename(source)}: line {line}: empty {column}")
        out.append((name, _resolve(base, name, IMAGE_SUFFIXES)))
    if not out:
        raise DataError(f"{filename(source)}: lists no images")
    return out


def _read_csv(source: Path) -> tuple[str, list[tuple[int, str]]]:
    """The column naming the images and ``(line, name)`` of each row; a file that is not a
    regular file, too large, not UTF-8 or not a CSV is one ``DataError`` line."""
    from drsearch.data.decode import ImageError, open_regular, read_limited

    where = filename(source)
    try:
        fd = open_regular(source, "CSV")
        try:
            raw = read_limited(fd, MAX_CSV_BYTES, "a list of images")
        finally:
            os.close(fd)
    except ImageError as exc:
        raise DataError(f"{where}: {exc}; give a folder of images or a CSV listing them") from None
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = raw.count(b"\n", 0, exc.start) + 1
        raise DataError(
            f"{where}: line {line}: not UTF-8 text (byte 0x{raw[exc.start]:02x}); save the file "
            'as UTF-8 ("CSV UTF-8" in a spreadsheet)'
        ) from None
    reader = csv.DictReader(io.StringIO(text, newline=""))
    try:
        header = [h.strip() for h in reader.fieldnames or []]
        column = next((c for c in PATH_COLUMNS if c in header), None)
        if column is None:
            shown = ", ".join(header)[:200] or "nothing"
            raise DataError(
                f"{where}: no column naming the images; the header needs one of "
                f"{', '.join(PATH_COLUMNS)}, got {shown}"
            )
        rows = [(reader.line_num, (row.get(column) or "").strip()) for row in reader]
    except csv.Error as exc:
        limit = csv.field_size_limit()
        what = (
            f"a field longer than {limit:,} characters (no image name is that long: is this "
            "the right file?)"
            if "field limit" in str(exc)
            else f"not a readable CSV ({exc})"
        )
        raise DataError(f"{where}: line {reader.reader.line_num}: {what}") from None
    return column, rows


def _resolve(base: Path, name: str, suffixes: Sequence[str]) -> Path:
    path = Path(name) if Path(name).is_absolute() else base / name
    if not path.name or path.is_file() or path.suffix.lower() in suffixes:
        return path
    for candidate in (path.with_name(path.name + s) for s in suffixes):
        if candidate.is_file():
            return candidate
    return path  # missing or not a file: listed with its error


def predict_images(
    grader: Grader,
    images: Sequence[tuple[str, Path]],
    batch_size: int | None = None,
    device: str = "cpu",
    progress: Callable[[int, int], None] | None = None,
) -> Predictions:
    """Grade ``images`` (``find_images``) in chunks of ``CHUNK``; an image that cannot be
    read gets its error, one the quality check flags (``data/quality.py``) its flags, and
    neither is graded."""
    from drsearch.inspect.evaluate import endpoint_scores, grade_new_images
    from drsearch.inspect.members import Preparation, combine_members
    from drsearch.train.batches import Split
    from drsearch.train.predict import predict, trained_model

    models = [(m, trained_model(m.recipe, m.state_dict)) for m in grader.members]
    n = len(images)
    probs = np.full((n, NUM_CLASSES), np.nan)
    grades = np.full(n, -1, dtype=np.int64)
    usable = np.zeros(n, dtype=bool)
    errors: list[str | None] = []
    flags: list[tuple[str, ...]] = []
    for start, pixels, decoded in _decoded_chunks(grader, [p for _, p in images]):
        rows = np.flatnonzero(decoded.usable)
        if len(rows):
            member_probs, member_grades = [], []
            for m, model in models:  # each member on its own preparation of the images
                own = pixels[Preparation.of(m.recipe)]
                split = Split(own, rows, np.zeros(len(rows), dtype=np.int64))
                train = m.recipe.train
                batch = batch_size or train.eval_batch_size or 2 * train.batch_size
                out = predict(model, split, batch, grader.views, device)
                p, g = grade_new_images(m.recipe.model.head, out, _temperature(m), _cuts(m))
                member_probs.append(p)
                member_grades.append(g)
            p, g = combine_members(member_probs, member_grades)
            probs[start + rows], grades[start + rows] = p, g
        usable[start : start + len(decoded.usable)] = decoded.usable
        errors += decoded.errors
        flags += decoded.flags
        if progress:
            progress(start + len(decoded.usable), n)
    scores = endpoint_scores(np.nan_to_num(probs))
    calls = {}
    for name, k in ENDPOINTS.items():
        point = grader.operating_points.get(name)
        calls[name] = scores[name] >= point["threshold"] if point else grades >= k
        calls[name] &= usable
    return Predictions([i for i, _ in images], [p for _, p in images], probs, grades, usable,
                       calls, scores, errors, flags)  # fmt: skip


def _decoded_chunks(
    grader: Grader, paths: list[Path]
) -> Iterator[tuple[int, dict[Preparation, np.ndarray], Decoded]]:
    """``(first index, pixels per preparation, what was decoded)`` of each chunk of
    ``paths``: each image decoded once and prepared as each member's recipe prepares it
    (``inspect.members``), and checked against the largest member's input size (flagged when
    any member's border threshold flags it)."""
    from drsearch.data.quality import image_flags
    from drsearch.inspect.members import decode_for, preparations

    wanted = list(preparations(grader.members))
    size = max(p.size for p in wanted)
    thresholds = sorted({p.config().border_threshold for p in wanted})

    def flagger(img: np.ndarray) -> tuple[str, ...]:
        found = [f for t in thresholds for f in image_flags(img, t, size)]
        return tuple(dict.fromkeys(found))

    # decoded, then graded: decoding the next chunk while this one is graded measured slower
    # on 2 cores (144 against 174 images/s, bench/predict_speed.py): both want every core
    for start in range(0, len(paths), CHUNK):
        pixels, decoded = decode_for(paths[start : start + CHUNK], wanted, flagger)
        yield start, pixels, decoded


def write_predictions(result: Predictions, grader: Grader, out: Path) -> None:
    """One row per image: ``id, path, grade, p_grade0..4``, per endpoint ``p_<name>``
    (``P(grade >= k)``) and its call (0/1), ``flags`` (why an image was not graded) and
    ``error`` (why it could not be read). Written atomically; a file that is not an earlier
    predictions file is never overwritten."""
    from drsearch.io import write_text_atomic

    _check_replaceable(out)
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    endpoints = list(ENDPOINTS)
    writer.writerow([
        *FIRST_COLUMNS, *(f"p_grade{g}" for g in range(NUM_CLASSES)),
        *(f"p_{e}" for e in endpoints), *(f"{e}_call" for e in endpoints), "flags", "error",
    ])  # fmt: skip
    blank = [""] * (NUM_CLASSES + 2 * len(endpoints))
    for i, (image_id, path) in enumerate(zip(result.ids, result.paths, strict=True)):
        names = [filename(image_id), filename(path)]
        if not result.usable[i]:
            writer.writerow([*names, "", *blank, ";".join(result.flags[i]),
                             result.errors[i] or ""])  # fmt: skip
            continue
        writer.writerow([
            *names, int(result.grades[i]),
            *(f"{v:.6f}" for v in result.probs[i]),
            *(f"{result.scores[e][i]:.6f}" for e in endpoints),
            *(int(result.calls[e][i]) for e in endpoints), "", "",
        ])  # fmt: skip
    out.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(out, buffer.getvalue())


def _check_replaceable(out: Path) -> None:
    """``out`` may be written: absent, or a predictions file (a regular file whose first
    line starts with ``FIRST_COLUMNS``)."""
    from drsearch.data.decode import ImageError, open_regular

    if not os.path.lexists(out):
        return
    try:
        fd = open_regular(out, "predictions")
    except ImageError as exc:
        raise ConfigError(f"{filename(out)}: {exc}; choose another --out") from None
    try:
        first = os.read(fd, 4096).split(b"\n")[0].decode("utf-8", "replace")
    finally:
        os.close(fd)
    if tuple(next(csv.reader([first]), [])[: len(FIRST_COLUMNS)]) != FIRST_COLUMNS:
        raise ConfigError(
            f"{filename(out)}: exists and is not a predictions file drsearch wrote; choose "
            "another --out (it is left as it is)"
        )
