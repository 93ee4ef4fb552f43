"""Commands that measure finalists beyond the search: ``evaluate`` (held-out test set)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from drsearch.cli.common import UserError, _open_study, _smoke_options, _storage_opt, cli

ALL_VIEWS = ("identity", "hflip", "vflip")


@cli.command()
@click.argument("target", type=click.Path(path_type=Path, dir_okay=False), metavar="FILE.yaml")
@click.option(
    "--trial",
    "which",
    default="best",
    show_default=True,
    help="Of a study: 'best' (the best feasible trial) or a trial number.",
)
@click.option(
    "--top-k",
    type=click.IntRange(min=1),
    help="Of a study: the K best feasible trials as one ensemble (mean of their per-grade "
    "probabilities).",
)
@click.option(
    "--weights",
    type=click.Path(path_type=Path, dir_okay=False, exists=True),
    help="With an exported recipe: the weights drsearch export --weights wrote for it.",
)
@click.option(
    "--tta", is_flag=True, help="Average each model over the image, its left-right and its "
    "upside-down mirror.",
)  # fmt: skip
@click.option(
    "--target-sensitivity",
    type=click.FloatRange(0, 1, min_open=True),
    help="Operating points: the threshold on P(grade >= k) that reaches this sensitivity on "
    "validation (default 0.975).",
)
@click.option(
    "--target-specificity",
    type=click.FloatRange(0, 1, min_open=True),
    help="Operating points at this validation specificity instead.",
)
@click.option("--temperature", is_flag=True, help="Fit a temperature on validation (calibration).")
@click.option(
    "--out",
    type=click.Path(path_type=Path, file_okay=False),
    help="Folder for evaluation-*.json and .html (default: reports/<study name>/).",
)
@_storage_opt
@_smoke_options
def evaluate(
    target: Path,
    which: str,
    top_k: int | None,
    weights: Path | None,
    tta: bool,
    target_sensitivity: float | None,
    target_specificity: float | None,
    temperature: bool,
    out: Path | None,
    storage: str | None,
    run_root: Path | None,
    smoke: bool,
) -> None:
    """Measure a study's best trial (or a trial, its top-k ensemble, or an exported recipe with
    --weights) once on the held-out test set, with 95% intervals.

    Validation chooses the operating points (and thresholds, temperature); the test set is
    measured with them frozen. Writes evaluation-*.json and an HTML page with ROC curves.
    """
    from drsearch.config.ensemble import is_ensemble_file
    from drsearch.config.loading import read_yaml
    from drsearch.inspect.evaluate import Options
    from drsearch.inspect.evaluate import evaluate as run_evaluation

    if target_sensitivity is not None and target_specificity is not None:
        raise UserError("--target-sensitivity and --target-specificity: give one of them")
    options = Options(
        target_sensitivity=target_sensitivity,  # unset: clinical.TARGET_SENSITIVITY
        target_specificity=target_specificity,
        views=ALL_VIEWS if tta else ("identity",),
        temperature=temperature,
    )
    stored: dict[str, Any] | None = None
    study = None
    if is_ensemble_file(read_yaml(target)):
        members, stored, views = _ensemble_members(target, which, top_k, weights)
        name = tag = target.stem
        options.views = ALL_VIEWS if tta else views
    elif weights is not None:
        members, name, tag, study = _recipe_members(target, weights, which, top_k)
        stored = (members[0].stored or {}).get("operating_points")
    else:
        members, name, tag, study = _study_members(target, which, top_k, storage, run_root, smoke)
    record = run_evaluation(members, options, stored)
    tag += "-tta" if tta else ""
    folder = out or Path("reports") / name
    json_path, html_path = folder / f"evaluation-{tag}.json", folder / f"evaluation-{tag}.html"
    _write(record, json_path, html_path, f"drsearch evaluation: {name}, {tag}")
    if study is not None:  # a study's own evaluation: kept with it (report, export)
        from drsearch.inspect.evaluate import summary

        study.set_user_attr(f"evaluation:{tag}", summary(record) | {"file": str(json_path)})
    _print(record, json_path, html_path)


def _study_members(
    target: Path, which: str, top_k: int | None, storage: str | None, run_root: Path | None,
    smoke: bool,
) -> tuple[list[Any], str, str, Any]:  # fmt: skip
    from drsearch.search.database import open_existing
    from drsearch.search.export import ranked_trials, select_trial, trial_model

    loaded = _open_study(target, storage, run_root, smoke)
    name = loaded.config.name + ("-smoke" if smoke else "")
    if top_k is not None:
        if which != "best":
            raise UserError("--top-k and --trial: give one of them")
        trials = ranked_trials(loaded, top_k)
        tag = f"top{len(trials)}"  # fewer when fewer trials are feasible
    else:
        trials = [select_trial(loaded, which, infeasible_ok=True)]
        tag = f"trial{trials[0].number}"
        if which == "best" and not trials[0].user_attrs.get("feasible"):
            click.echo(
                f"Warning: no trial meets the study's constraints; evaluating the best "
                f"infeasible one, trial {trials[0].number}",
                err=True,
            )
    members = [trial_model(t) for t in trials]
    return members, name, tag, open_existing(loaded.config, loaded.path)


def _ensemble_members(
    target: Path, which: str, top_k: int | None, weights: Path | None
) -> tuple[list[Any], dict[str, Any] | None, tuple[str, ...]]:
    """An exported ensemble's members, its stored operating points and its views."""
    from drsearch.config.ensemble import load_ensemble
    from drsearch.inspect.evaluate import recipe_member

    if which != "best" or top_k is not None or weights is not None:
        raise UserError(f"{target}: an ensemble file names its members; drop --trial, --top-k "
                        "and --weights")  # fmt: skip
    ensemble = load_ensemble(target)
    evaluation = ensemble.evaluation or {}
    chosen = {m.get("trial"): m for m in evaluation.get("members", [])}
    members = []
    for ref in ensemble.members:
        member = recipe_member(ref.recipe, ref.weights)
        # what the ensemble's own evaluation chose for this member (not its solo evaluation)
        member.stored = chosen.get(member.trial)
        members.append(member)
    return members, evaluation.get("operating_points"), tuple(ensemble.views)


def _recipe_members(
    target: Path, weights: Path, which: str, top_k: int | None
) -> tuple[list[Any], str, str, None]:
    from drsearch.inspect.evaluate import recipe_member

    if which != "best" or top_k is not None:
        raise UserError("--trial and --top-k are for a study; an exported recipe is one model")
    member = recipe_member(target, weights)
    return [member], target.stem, target.stem, None


def _write(record: dict[str, Any], json_path: Path, html_path: Path, title: str) -> None:
    from drsearch.inspect.evaluate import write_record
    from drsearch.inspect.report.evaluation import write_evaluation_page

    json_path.parent.mkdir(parents=True, exist_ok=True)
    write_record(record, json_path)
    write_evaluation_page(record, html_path, title)


def _print(record: dict[str, Any], json_path: Path, html_path: Path) -> None:
    from rich.table import Table

    from drsearch.cli.progress import stderr_console
    from drsearch.inspect.report.evaluation import table_rows

    data = record["data"]
    console = stderr_console(stderr=False)
    table = Table(
        title=f"{', '.join(record['what']['models'])} on the held-out test set "
        f"({data['n_test']} images; 95% intervals)"
    )
    for column in ("figure", "test", "validation (chose; optimistic)"):
        table.add_column(column)
    for row in table_rows(record):
        table.add_row(*row)
    console.print(table)
    for name, op in record["operating_points"].items():
        target = {k: v for k, v in op.items() if k.startswith("target_")}
        ((kind, value),) = target.items()
        console.print(
            f"operating point {name}: P(grade >= {op['grade_at_least']}) >= "
            f"{op['threshold']:.4f} (chosen on validation for {kind[7:]} {value:g})"
        )
    for m in record["members"]:
        if m["temperature"] != 1.0:
            console.print(
                f"{m['model']}: temperature {m['temperature']:.3f} (fitted on validation); test "
                f"ECE {m['test_ece_before_temperature']:.3f} without it"
            )
    passed = sum(c["passed"] for c in record["checklist"])
    console.print(f"medical-grade checklist on test: {passed}/{len(record['checklist'])} pass")
    click.echo(f"evaluation -> {json_path} and {html_path}")


@cli.command()
@click.argument("study", type=click.Path(path_type=Path, dir_okay=False), metavar="STUDY.yaml")
@click.option(
    "--top-k", default=3, show_default=True, type=click.IntRange(min=1),
    help="How many of the best feasible trials to retrain.",
)  # fmt: skip
@click.option(
    "--seeds", default=3, show_default=True, type=click.IntRange(min=2),
    help="Fresh training seeds per finalist (train.seed + 1 .. + SEEDS).",
)  # fmt: skip
@click.option("--executor", type=click.Choice(["ray", "local"]), help="Override executor.")
@click.option(
    "--max-concurrent", type=click.IntRange(min=1), help="Override resources.max_concurrent."
)
@_storage_opt
@_smoke_options
@click.option("--quiet", is_flag=True, help="No live progress view.")
def confirm(
    study: Path,
    top_k: int,
    seeds: int,
    executor: str | None,
    max_concurrent: int | None,
    storage: str | None,
    run_root: Path | None,
    smoke: bool,
    quiet: bool,
) -> None:
    """Retrain the study's top-k feasible configurations with fresh seeds and rank them by
    their mean, not their luckiest seed.

    The runs are trials of the study <name>-confirm in the same storage (each linked to its
    source trial); running the command again continues them.
    """
    from drsearch.search.confirm import confirmation_study, summarise
    from drsearch.search.runners import run_study

    overrides = {"executor": executor, "resources.max_concurrent": max_concurrent}
    loaded = _open_study(study, storage, run_root, smoke, overrides)
    companion = confirmation_study(loaded, top_k, seeds)
    if quiet:
        summary = run_study(companion)
    else:
        from drsearch.cli.progress import RichStudyProgress

        with RichStudyProgress(companion.config.budget.n_trials, companion.max_epochs) as progress:
            summary = run_study(companion, progress)
    click.echo(
        f"confirmation study {companion.config.name}: {summary.counts.counted} runs "
        f"({summary.counts.complete} complete, {summary.counts.failed} failed), "
        f"wall {summary.wall_seconds:.1f}s"
    )
    finalists = summarise(loaded)
    record = _confirm_record(finalists, seeds)
    name = loaded.config.name + ("-smoke" if smoke else "")
    path = Path("reports") / name / "confirm.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    from drsearch.inspect.evaluate import write_record
    from drsearch.search.database import open_existing

    write_record(record, path)
    open_existing(loaded.config, loaded.path).set_user_attr("confirm", record)
    _print_finalists(record)
    click.echo(f"confirmation -> {path}")


def _confirm_record(finalists: list[Any], seeds: int) -> dict[str, Any]:
    return {
        "ranked_by": "mean objective value over the confirmation seeds",
        "finalists": [
            {
                "trial": f.source.number,
                "search_value": f.source.value,
                "params": f.source.params,
                "seeds": [r.user_attrs.get("seed") for r in f.runs],
                "runs": [r.number for r in f.runs],
                "stats": f.stats,
                "stable_across_seeds": f.variation.__dict__,
            }
            for f in finalists
        ],
    }


def _print_finalists(record: dict[str, Any]) -> None:
    from rich.table import Table

    from drsearch.cli.progress import stderr_console
    from drsearch.fmt import num

    table = Table(title="Finalists ranked by their mean over fresh seeds")
    for column in ("rank", "trial", "search value", "mean value", "sd", "seeds",
                   "accuracy mean (min-max)", "PDR sens. mean", "< 5 points"):  # fmt: skip
        table.add_column(column)
    for rank, f in enumerate(record["finalists"], 1):
        s, acc = f["stats"], f["stats"]["accuracy"]
        v = f["stable_across_seeds"]
        table.add_row(
            str(rank),
            str(f["trial"]),
            num(f["search_value"]),
            num(s["value"]["mean"]),
            num(s["value"]["sd"]),
            str(s["value"]["n"]),
            f"{num(acc['mean'])} ({num(acc['min'])}-{num(acc['max'])})",
            num(s["sensitivity_pdr"]["mean"]),
            ("PASS" if v["passed"] else "FAIL") + f" ({num(v['observed'])})",
        )
    stderr_console(stderr=False).print(table)
