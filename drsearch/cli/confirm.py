"""``drsearch confirm``: the finalist stage on demand, and its printed table (also used by
``drsearch run`` when its search budget is spent)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from drsearch.cli.common import _open_study, _smoke_options, _storage_opt, cli


@cli.command()
@click.argument("study", type=click.Path(path_type=Path, dir_okay=False), metavar="STUDY.yaml")
@click.option(
    "--top-k", type=click.IntRange(min=1),
    help="How many finalists (default: the study's finalists.top_k, else 3).",
)  # fmt: skip
@click.option(
    "--seeds", type=click.IntRange(min=2),
    help="Retrain each finalist with this many fresh seeds (train.seed + 1 .. + SEEDS).",
)  # fmt: skip
@click.option(
    "--folds", type=click.IntRange(min=2),
    help="Retrain each finalist on every fold of data.cv_folds and pool the out-of-fold "
    "predictions (the study must have validated on those folds).",
)  # fmt: skip
@click.option("--executor", type=click.Choice(["ray", "local"]), help="Override executor.")
@click.option(
    "--max-concurrent", type=click.IntRange(min=1), help="Override resources.max_concurrent."
)
@click.option("--retry-failed", is_flag=True, help="Run failed confirmation runs again.")
@_storage_opt
@_smoke_options
@click.option("--quiet", is_flag=True, help="No live progress view.")
def confirm(
    study: Path,
    top_k: int | None,
    seeds: int | None,
    folds: int | None,
    executor: str | None,
    max_concurrent: int | None,
    retry_failed: bool,
    storage: str | None,
    run_root: Path | None,
    smoke: bool,
    quiet: bool,
) -> None:
    """Confirm the study's finalists (its finalist stage, run on demand): retrain the top-k
    trials by search value on every fold or with fresh seeds, and crown the best feasible
    confirmed one as the study's best.

    Without --seeds/--folds, the study file's finalists: section says how (else 3 seeds).
    The runs are trials of the study <name>-confirm in the same storage (each linked to its
    source trial); running the command again continues them.
    """
    from drsearch.search.selection import plan_of

    overrides = {"executor": executor, "resources.max_concurrent": max_concurrent}
    loaded = _open_study(study, storage, run_root, smoke, overrides)
    plan = plan_of(loaded, top_k, seeds, folds)
    from drsearch.cli.common import storage_note, study_args
    from drsearch.errors import StudyInterrupted

    again = (
        f"drsearch confirm {study_args(study, smoke, run_root, storage)}"
        f" --top-k {plan.top_k} --{plan.mode} {plan.n}"
    )
    try:
        run_finalists(loaded, plan, quiet, again, retry_failed)
    except StudyInterrupted as exc:  # a printed --storage "$DRSEARCH_STORAGE" needs it set
        raise StudyInterrupted(f"{exc}{storage_note(storage)}") from None


def run_finalists(
    loaded: Any, plan: Any, quiet: bool, rerun: str | None = None, retry_failed: bool = False
) -> dict[str, Any]:
    """Run the finalist stage of ``loaded`` (``plan``): its runs, then the record, printed.
    ``rerun``: the command that continues it after Ctrl-C; ``retry_failed``: failed runs are
    queued again."""
    from drsearch.search.runners import run_study
    from drsearch.search.selection import confirm_record, confirmation_study

    wall = 0.0
    while True:  # one pass; a race, round after round until a round queues nothing
        companion = confirmation_study(loaded, plan, retry_failed)
        if quiet:
            summary = run_study(companion, rerun=rerun)
        else:
            from drsearch.cli.progress import RichStudyProgress

            budget = companion.config.budget.n_trials
            with RichStudyProgress(budget, companion.max_epochs) as progress:
                summary = run_study(companion, progress, rerun=rerun)
        wall += summary.wall_seconds
        if plan.race is None or summary.started_trials == 0:
            break  # a round that queued nothing (or runs another runner holds): done here
        retry_failed = False  # retried once, in the first round
    click.echo(
        f"finalist stage ({plan.label}), study {companion.config.name}: "
        f"{summary.counts.counted} runs ({summary.counts.complete} complete, "
        f"{summary.counts.failed} failed), wall {wall:.1f}s"
    )
    record = confirm_record(loaded, plan)
    print_finalists(record)
    name = loaded.config.name + ("-smoke" if loaded.smoke else "")
    path = Path("reports") / name / "confirm.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    from drsearch.inspect.evaluate import write_record

    write_record(record, path)
    click.echo(f"finalists -> {path}")
    return record


def print_finalists(record: dict[str, Any]) -> None:
    from rich.table import Table

    from drsearch.cli.progress import stderr_console
    from drsearch.fmt import num

    plan = record["plan"]
    race = record.get("race")
    how = (
        f"a race of the top {plan['top_k']} on up to {plan['n']} {plan['mode']}, "
        f"{race['spent']} of {race['cap']} runs spent"
        if race is not None
        else f"top {plan['top_k']}, confirmed on {plan['n']} {plan['mode']}"
    )
    table = Table(
        title=f"Finalists: {how} (constraints on the {record['constraints_on'].replace('_', ' ')})"
    )
    folds = plan["mode"] == "folds"
    columns = ["trial", "search value", "confirmed value", "optimism gap", "feasible"]
    columns += [f"feasible {plan['mode']}", f"value of each {plan['mode'][:-1]}"]
    columns += ["value on folds 1+ (unseen by the search)"] if folds else []
    for column in (*columns, "confirmed on", "note"):
        table.add_column(column)
    for e in record["finalists"]:
        crowned = e["trial"] == record["crowned"]
        failed = "; ".join(_failed_run(f) for f in e["failed_runs"])
        note = "crowned" if crowned else ""
        raced = e.get("race") or {}
        if raced.get("why") and not crowned:
            note = raced["why"]
        if not e["complete"] and raced and not e["runs"]:
            note = raced.get("why") or "no run: the race spent its runs elsewhere"
        elif not e["complete"]:
            note = "not confirmed: " + (e.get("error") or failed or "runs missing")
        elif not e["feasible"]:
            note = "; ".join(e["infeasible_reasons"])
        elif failed:
            note += f" (failed: {failed})"
        unseen = e.get("unseen_folds") or {}
        row = [
            str(e["trial"]) + (" *" if crowned else ""),
            num(e["search_value"]),
            num(e.get("confirmed_value")),
            num(e.get("optimism_gap")),
            {True: "yes", False: "no", None: "-"}[e.get("feasible")],
            f"{e.get('feasible_runs', 0)} of {len(e['runs'])}" if e["runs"] else "-",
            ", ".join(num(v) for v in e.get("run_values", [])) or "-",
        ]
        row += [num(unseen.get("value"))] if folds else []
        table.add_row(*row, e.get("evidence", "-"), note)
    stderr_console(stderr=False).print(table)
    if record["crowned"] is not None:
        click.echo(
            f"study best: trial {record['crowned']} (confirmed); "
            + (
                f"the search's own best was trial {record['search_best']}"
                if record["search_best"] is not None
                else "the search alone named none (no trial met the constraints on its split)"
            )
        )
    elif record["pending"]:
        click.echo(
            f"finalist(s) {', '.join(map(str, record['pending']))} not confirmed yet (runs "
            "missing, failed or unreadable): run again, or with --retry-failed"
        )
    else:
        click.echo("no finalist meets the constraints on its confirmation: no winner is named")


def _failed_run(f: dict[str, Any]) -> str:
    which = f"fold {f['fold']}" if f.get("fold") is not None else f"seed {f.get('seed')}"
    return f"run {f['run']} ({which}) {f['reason']}"
