"""What ``drsearch lr`` shows: the schedule a recipe will produce, per group, before training."""

from __future__ import annotations

import io
from collections.abc import Mapping
from typing import Any

from drsearch.config.recipe import Recipe
from drsearch.data.records import Skipped
from drsearch.data.sources import load_records
from drsearch.data.split import data_split
from drsearch.errors import ConfigError
from drsearch.train.schedule import StepPlan, restart_epochs, schedule_table, steps_per_epoch


def steps_from_data(recipe: Recipe) -> int:
    """Optimizer steps per epoch from the label table and split (images are not decoded)."""
    records = load_records(recipe.data, Skipped())
    d = recipe.data
    train_idx = data_split(records, d).train
    return steps_per_epoch(len(train_idx), recipe)


def lr_csv(recipe: Recipe, spe: int) -> str:
    """``epoch,step,group,lr`` for every optimizer step and group."""
    check_size(recipe, spe)
    out = io.StringIO()
    out.write("epoch,step,group,lr\n")
    for epoch, step, group, lr in schedule_table(recipe, StepPlan(spe, recipe.train.epochs)):
        out.write(f"{epoch},{step},{group},{lr:.8g}\n")
    return out.getvalue()


#: ``drsearch lr`` lists at most this many optimizer steps (a longer run is a typo, or needs
#: a smaller ``--steps-per-epoch`` to look at).
MAX_STEPS = 5_000_000
#: The table shows at most this many epochs (evenly spaced, the last one included).
MAX_ROWS = 120


def check_size(recipe: Recipe, spe: int) -> None:
    total = recipe.train.epochs * spe
    if total > MAX_STEPS:
        raise ConfigError(
            f"train.epochs: {recipe.train.epochs} epochs x {spe} steps = {total:,} optimizer "
            f"steps, more than drsearch lr lists ({MAX_STEPS:,}); pass a smaller "
            "--steps-per-epoch to see the shape of the schedule"
        )


def lr_summary(recipe: Recipe, spe: int) -> tuple[list[list[str]], list[str]]:
    """A table (header first) of each group's LR at the first and last step of each epoch
    (epochs from 1, as in the training log), plus notes a reader might otherwise miss."""
    check_size(recipe, spe)
    rows = schedule_table(recipe, StepPlan(spe, recipe.train.epochs))
    by_epoch: dict[int, dict[str, list[float]]] = {}
    for epoch, _, group, lr in rows:
        by_epoch.setdefault(epoch, {}).setdefault(group, []).append(lr)
    table = [["epoch", "backbone first", "backbone last", "head first", "head last"]]
    every = max(1, -(-len(by_epoch) // MAX_ROWS))
    for epoch, groups in sorted(by_epoch.items()):
        if epoch % every and epoch != len(by_epoch) - 1:
            continue
        b, h = groups["backbone"], groups["head"]
        table.append([str(epoch + 1), f"{b[0]:.3e}", f"{b[-1]:.3e}", f"{h[0]:.3e}", f"{h[-1]:.3e}"])
    notes = _notes(recipe, rows)
    if every > 1:
        notes.append(f"showing every {every}th epoch of {len(by_epoch)}; --csv lists every step")
    return table, notes


def _notes(recipe: Recipe, rows: list[tuple[int, int, str, float]]) -> list[str]:
    s, o = recipe.schedule, recipe.optim
    notes = [
        f"schedule {s.name}; head base LR {o.lr:g}, backbone base LR "
        f"{o.lr * o.backbone_lr_mult:g} (backbone_lr_mult {o.backbone_lr_mult:g})"
    ]
    if s.warmup_epochs:
        notes.append(
            f"warmup: {s.warmup_epochs:g} epoch(s) from {s.warmup_start_factor:g}x to 1x; "
            f"the configured LR is first reached after {s.warmup_epochs:g} epoch(s)"
        )
    peak = max(lr for _, _, g, lr in rows if g == "head")
    if peak < o.lr * 0.999:
        notes.append(f"the head never reaches its configured LR {o.lr:g} (peak {peak:.3e})")
    restarts = restart_epochs(s, recipe.train.epochs)
    if restarts:
        notes.append(
            "cosine restarts jump back to the full LR after "
            + ", ".join(f"{e:g}" for e in restarts)
            + " epoch(s)"
        )
    if s.name == "plateau":
        notes.append("plateau reductions depend on validation results; shown without them")
    return notes


#: Searched keys that change what ``drsearch lr`` shows: the LRs, the schedule, and what sets
#: its length in steps (epochs, batch size, accumulation).
LR_KEYS = (
    "optim.lr", "optim.backbone_lr_mult", "schedule.", "train.epochs", "train.batch_size",
    "train.grad_accum",
)  # fmt: skip


def searched_note(space: Mapping[str, Any]) -> str | None:
    """What the table of a study's base recipe does not show: the schedule keys the search
    varies, with the range each spans."""
    found = [
        f"{key} {_span(param)}"
        for key, param in space.items()
        if any(key == k or key.startswith(k) for k in LR_KEYS)
    ]
    if not found:
        return None
    return (
        "searched by the study, so each trial's schedule differs from this base recipe's: "
        + "; ".join(found)
        + " (--trial N or --trial best shows a trial's own)"
    )


def _span(param: Any) -> str:
    choices = getattr(param, "choices", None)
    if choices is not None:
        return "one of " + ", ".join(str(c) for c in choices)
    scale = ", log scale" if getattr(param, "log", False) else ""
    return f"{param.low:g} to {param.high:g}{scale}"
