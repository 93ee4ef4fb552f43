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
    help="Of a study: 'best' (the crowned finalist once a finalist stage ran, else the best "
    "feasible trial), 'search-best' (the search's own best) or a trial number.",
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
    from drsearch.config.loading import is_recipe_file, read_yaml
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
    study = loaded = None
    raw = read_yaml(target)
    if weights is None and is_recipe_file(raw):
        guess = target.with_suffix(".pt")
        hint = f" (--weights {guess}, if that is the file export wrote)" if guess.is_file() else ""
        raise UserError(
            f"{target}: an exported (training) recipe is evaluated with its weights: "
            f"`drsearch evaluate {target} --weights FILE.pt`{hint}; a study file evaluates its "
            "best trial"
        )
    cert: dict[str, Any] | None = None  # a certified result's certificate
    if is_ensemble_file(raw):
        from drsearch.config.ensemble import load_ensemble

        members, stored, views = _ensemble_members(target, which, top_k, weights)
        cert = load_ensemble(target).certificate
        name = tag = target.stem
        options.views = ALL_VIEWS if tta else views
    elif weights is not None:
        members, name, tag, study = _recipe_members(target, weights, which, top_k)
        stored = (members[0].stored or {}).get("operating_points")
    else:
        members, name, tag, loaded, cert = _study_members(
            target, which, top_k, storage, run_root, smoke, tta
        )
        from drsearch.search.database import open_existing

        study = open_existing(loaded.config, loaded.path)
    record = run_evaluation(members, options, stored)
    if cert is not None:  # what was certified, beside what the test set says of it
        from drsearch.search.shipping import held

        record["certificate"] = cert | {"held": held(cert, record["test"]["metrics"])}
    tag += "-tta" if tta and study is None else ""
    if study is not None:  # logged before the paragraph, so it counts this use too
        _log_test_use(study, record, tag)
    from drsearch.inspect.methods import methods_paragraph

    facts = None
    if study is not None:
        from drsearch.search.export import study_facts

        facts = study_facts(loaded, study)
    record["methods"] = methods_paragraph(record, facts)
    folder = out or Path("reports") / name
    json_path, html_path = folder / f"evaluation-{tag}.json", folder / f"evaluation-{tag}.html"
    _write(record, json_path, html_path, f"drsearch evaluation: {name}, {tag}")
    if study is not None:  # a study's own evaluation: kept with it (report, export)
        from drsearch.inspect.evaluate import summary

        study.set_user_attr(f"evaluation:{tag}", summary(record) | {"file": str(json_path)})
    _print(record, json_path, html_path)


def _log_test_use(study: Any, record: dict[str, Any], tag: str) -> None:
    """Record this test-set evaluation with the study (what, when); once a second candidate
    has been measured on the test set, say that its figures are no longer unbiased."""
    import time

    from drsearch.config.study import TEST_LOG_ATTR

    log = list(study.user_attrs.get(TEST_LOG_ATTR) or [])
    trials = sorted(record["what"]["trials"])
    log.append({"tag": tag, "trials": trials, "at": time.strftime("%Y-%m-%dT%H:%M:%S%z")})
    study.set_user_attr(TEST_LOG_ATTR, log)
    candidates = {tuple(e["trials"]) for e in log}
    if len(candidates) > 1:
        click.echo(
            f"Warning: the held-out test set has now measured {len(candidates)} candidates "
            f"({'; '.join('trials ' + ', '.join(map(str, c)) for c in sorted(candidates))}): "
            "choosing among them by their test figures makes those figures optimistic too; "
            "report the first candidate's, or hold out a fresh test set",
            err=True,
        )


def _study_members(
    target: Path, which: str, top_k: int | None, storage: str | None, run_root: Path | None,
    smoke: bool, tta: bool,
) -> tuple[list[Any], str, str, Any, dict[str, Any] | None]:  # fmt: skip
    """A study's members: its certified result by default (``search.shipping``), else the
    trial or top-k ensemble asked for; with the certificate when it is the certified one."""
    from drsearch.search.export import evaluation_tag, ranked_trials, select_trial, trial_model
    from drsearch.search.shipping import certificate, certified, member_models

    loaded = _open_study(target, storage, run_root, smoke)
    name = loaded.config.name + ("-smoke" if smoke else "")
    if which == "best" and top_k is None:
        select_trial(loaded, which)  # no winner: exit 3, said once
        c = certified(loaded)
        if c is not None:  # what the study certified, and ships: its confirmation models
            return member_models(c), name, c.tag + ("-tta" if tta else ""), loaded, certificate(c)
    if top_k is not None:
        if which != "best":
            raise UserError("--top-k and --trial: give one of them")
        trials = ranked_trials(loaded, top_k)
        tag = evaluation_tag([t.number for t in trials], tta)
    else:
        trials = [select_trial(loaded, which)]
        tag = evaluation_tag([trials[0].number], tta)
        from drsearch.search.database import open_existing
        from drsearch.search.selection import FINALISTS_ATTR

        confirmed = open_existing(loaded.config, loaded.path).user_attrs.get(FINALISTS_ATTR)
        # a crowned finalist is feasible on its confirmation, whatever its search said
        if which == "best" and not confirmed and not trials[0].user_attrs.get("feasible"):
            click.echo(
                f"Warning: no trial meets the study's constraints; evaluating the best "
                f"infeasible one, trial {trials[0].number}",
                err=True,
            )
    members = [trial_model(t) for t in trials]
    return members, name, tag, loaded, None


def _ensemble_members(
    target: Path, which: str, top_k: int | None, weights: Path | None
) -> tuple[list[Any], dict[str, Any] | None, tuple[str, ...]]:
    """An exported ensemble's members, its stored operating points and its views."""
    from drsearch.inspect.members import ensemble_members

    if which != "best" or top_k is not None or weights is not None:
        raise UserError(f"{target}: an ensemble file names its members; drop --trial, --top-k "
                        "and --weights")  # fmt: skip
    return ensemble_members(target)


def _recipe_members(
    target: Path, weights: Path, which: str, top_k: int | None
) -> tuple[list[Any], str, str, None]:
    from drsearch.inspect.members import recipe_member

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
        f"({data['n_test']} images of {data.get('n_test_patients', data['n_test'])} patients; "
        f"95% intervals)"
    )
    for column in ("figure", "test", "validation (chose; optimistic)"):
        table.add_column(column)
    for row in table_rows(record):
        table.add_row(*row)
    console.print(table)
    for name, op in record["operating_points"].items():
        target = {k: v for k, v in op.items() if k.startswith("target_")}
        ((kind, value),) = target.items()
        there = op.get("validation_at_threshold", {}).get(kind[7:], {})
        low = f"; on validation {there['value']:.3f}, lower bound {there['low']:.3f}" if (
            there.get("low") is not None
        ) else ""  # fmt: skip
        console.print(
            f"operating point {name}: P(grade >= {op['grade_at_least']}) >= "
            f"{op['threshold']:.4f} (chosen on validation for {kind[7:]} {value:g}{low})"
        )
        if op.get("warning"):
            console.print(f"Warning: {op['warning']}")
    data = record["data"]
    if data.get("test_duplicates_of_train"):
        console.print(
            f"Warning: {data['test_duplicates_of_train']} test images have the same file "
            "content as a training image (set data.drop_val_duplicates: true to drop them)"
        )
    for m in record["members"]:
        if m["temperature"] != 1.0:
            console.print(
                f"{m['model']}: temperature {m['temperature']:.3f} (fitted on validation); test "
                f"ECE {m['test_ece_before_temperature']:.3f} without it"
            )
    results = [c["result"] for c in record["checklist"]]
    console.print(
        f"medical-grade checklist on test (95% intervals): {results.count('pass')} pass, "
        f"{results.count('fail')} fail, {results.count('inconclusive')} inconclusive of "
        f"{len(results)}"
    )
    cert = record.get("certificate")
    if cert is not None:
        rows = cert["held"]
        console.print(
            f"certified ({cert['evidence']}; finalist {cert['finalist']}'s {cert['mode'][:-1]} "
            f"models, as shipped): {sum(r['held'] for r in rows)} of {len(rows)} figures held "
            f"on test (at or above the certified lower bound: accuracy's two-sided "
            f"{cert['confidence']:.0%}, each constraint's one-sided "
            f"{cert.get('constraint_confidence', 0.9):.0%})"
        )
        for r in rows:
            console.print(
                f"  {r['figure']}: certified {r['certified']:.3f} (lower bound "
                f"{r['bound']:.3f}), test {r['test']:.3f}: {'held' if r['held'] else 'BELOW'}",
                highlight=False,
            )
    for c in record.get("training_checklist", []):  # a training criterion, not a test result
        console.print(
            f"training, on validation epochs: {c['name']} {c['shown']} ({c['threshold']}): "
            f"{c['result']}"
        )
    click.echo(f"evaluation -> {json_path} and {html_path}")
