"""Commands that run a study or take a trial out of it: ``run``, ``check``, ``export``."""

from __future__ import annotations

import shlex
from pathlib import Path
from typing import Any

import click

from drsearch.cli.common import (
    UserError,
    _open_study,
    _overrides,
    _set_opt,
    _smoke_options,
    _storage_opt,
    cli,
    print_no_winner,
    storage_note,
    study_args,
)
from drsearch.cli.summary import print_next_steps, print_summary


@cli.command()
@click.argument("study", type=click.Path(path_type=Path, dir_okay=False), metavar="STUDY.yaml")
@click.option(
    "--n-trials",
    type=click.IntRange(min=1),
    help="Override budget.n_trials (with --smoke: smoke.n_trials).",
)
@_storage_opt
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
    help="Run failed trials again with the same parameters, continuing from their checkpoints "
    "when the recipe is unchanged (interrupted trials run again without it, unless "
    "interrupted 3 times in a row).",
)
@click.option(
    "--accept-changes",
    is_flag=True,
    help="Continue a study whose objective, search space, recipe, pruner or data changed since "
    "it was created (refused otherwise); the change is recorded in the study.",
)
@click.option(
    "--warm-start",
    type=click.Path(path_type=Path, dir_okay=False),
    help="An earlier study file: queue its best feasible configurations (warm_start.top_k, "
    "default 5) first, mapped onto this study's space; once per study.",
)
@_set_opt
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
    accept_changes: bool,
    warm_start: Path | None,
    sets: tuple[str, ...],
    quiet: bool,
) -> None:
    """Run (or continue) a study until its budget is spent.

    The budget (budget.n_trials, or --n-trials) is stored with the study: several runners
    started on one study together run exactly that many trials.
    """
    import torch

    overrides = {
        "smoke.n_trials" if smoke else "budget.n_trials": n_trials,
        "executor": executor,
        "resources.max_concurrent": max_concurrent,
        "name": study_name,
        "ray.address": ray_address,
        "warm_start.study": None if warm_start is None else str(warm_start),
    }
    use_gpu = smoke and torch.cuda.is_available()
    loaded = _open_study(study, storage, run_root, smoke, overrides, use_gpu, _overrides(sets))
    for warning in loaded.warnings:
        click.echo(f"Warning: {warning}", err=True)
    if smoke:
        from drsearch.search.smoke import reset_smoke

        click.echo(reset_smoke(loaded), err=True)
    # what continues this study after Ctrl-C: the same study file and the options naming it;
    # what changes the run's meaning is repeated: --n-trials (the budget is "last run wins":
    # without it, a continuation would run to the study file's budget) and each --set (the
    # study's definition: continuing without it is refused)
    again = f"drsearch run {study_args(study, smoke, run_root, storage, study_name)}"
    again += f" --n-trials {n_trials}" if n_trials else ""
    again += "".join(f" --set {shlex.quote(s)}" for s in sets)
    from drsearch.errors import StudyInterrupted
    from drsearch.search.runners import executor_session

    try:
        with executor_session(loaded, ray_address):  # one Ray session: search and finalists
            summary, wall = _run_and_confirm(loaded, quiet, retry_failed, again, accept_changes)
    except StudyInterrupted as exc:  # a printed --storage "$DRSEARCH_STORAGE" needs it set
        raise StudyInterrupted(f"{exc}{storage_note(storage)}") from None
    click.echo(wall)
    held_out = bool(loaded.recipe.data.test_fraction) or any(
        s.use == "test" for s in loaded.recipe.data.sources
    )
    from drsearch.search.database import open_existing
    from drsearch.search.verdict import study_best

    opened = open_existing(loaded.config, loaded.path)
    verdict = study_best(opened)
    winner = verdict.trial is not None
    finalists = bool(loaded.config.finalists)
    named = study_args(study, smoke, run_root, study_name=study_name)
    certified = winner and verdict.source == "finalists"
    print_next_steps(named, summary, held_out, finalists, winner, certified)
    if not winner and summary.counts.counted + summary.counts.paused:
        print_no_winner(opened, named)
    from click.core import ParameterSource

    source = click.get_current_context().get_parameter_source("storage")
    if storage is not None and source == ParameterSource.COMMANDLINE:
        click.echo("  (add the same --storage to each, or export DRSEARCH_STORAGE=... once)")
    if summary.counts.counted and summary.counts.counted == summary.counts.failed:
        raise click.ClickException(f"every trial failed; first: {summary.first_failure}")


def _run_and_confirm(
    loaded: Any, quiet: bool, retry_failed: bool, again: str, accept_changes: bool = False
) -> tuple[Any, str]:
    """Run the search, print its summary, then the finalist stage once the search budget is
    spent and nothing runs. Returns the search's summary and the wall-time line."""
    import time

    from drsearch.search.runners import run_study

    if quiet:  # no live view, but what goes wrong is still said
        from drsearch.search.runners.common import SilentProgress

        class WarningsOnly(SilentProgress):
            def warn(self, message: str) -> None:
                click.echo(f"Warning: {message}", err=True)

        summary = run_study(
            loaded,
            WarningsOnly(),
            retry_failed=retry_failed,
            rerun=again,
            accept_changes=accept_changes,
        )
    else:
        from drsearch.cli.progress import RichStudyProgress

        with RichStudyProgress(loaded.config.budget.n_trials, loaded.max_epochs) as progress:
            summary = run_study(
                loaded,
                progress,
                retry_failed=retry_failed,
                rerun=again,
                accept_changes=accept_changes,
            )
    print_summary(summary)
    c = summary.counts
    search_only = f"study wall time: {summary.wall_seconds:.1f}s"
    if not loaded.config.finalists:
        return summary, search_only
    if c.counted < summary.n_trials or c.running or c.paused:
        click.echo("finalist stage: after the search budget is spent and no trial runs")
        return summary, search_only
    # the search budget is spent and nothing runs: the finalist stage (continued when an
    # earlier run already queued it; another runner of the study shares its runs)
    from drsearch.cli.confirm import run_finalists
    from drsearch.search.selection import plan_of

    started = time.time()
    run_finalists(loaded, plan_of(loaded), quiet, again, retry_failed)
    stage = time.time() - started
    return summary, (
        f"study wall time: {summary.wall_seconds + stage:.1f}s (search "
        f"{summary.wall_seconds:.1f}s, finalists {stage:.1f}s)"
    )


_samples_opt = click.option(
    "--samples", default=20, show_default=True, type=click.IntRange(1, 10_000),
    help="How many configurations of the search space to draw and validate.",
)  # fmt: skip


@cli.command()
@click.argument("study", type=click.Path(path_type=Path, dir_okay=False), metavar="STUDY.yaml")
@_samples_opt
def check(study: Path, samples: int) -> None:
    """Check a study before paying for it: the study file, its recipe and search space, the
    data and weights it names, and a sample of the configurations it will try. Writes nothing.
    """
    from drsearch.config.study import load_study
    from drsearch.search.checks import input_problems, problems_error, sample_problems

    loaded = load_study(study)
    for warning in loaded.warnings:
        click.echo(f"Warning: {warning}", err=True)
    evidence: list[str] = []
    problems, warnings = input_problems(loaded, generate=False, evidence=evidence)
    from drsearch.errors import ConfigError
    from drsearch.search.warmstart import check_queued

    try:  # the baseline is a point of the space; the warm start's source opens
        warnings += check_queued(loaded)
    except ConfigError as exc:
        problems.append(str(exc))
    for warning in warnings:
        click.echo(f"Warning: {warning}", err=True)
    impossible = sample_problems(loaded, samples)
    if impossible:
        problems.append(
            f"{len(impossible)} of {samples} sampled configurations are impossible recipes; "
            f"first: {impossible[0]}"
        )
    if problems:  # every problem at once, not one per try
        raise UserError(str(problems_error(problems)))
    for line in evidence:
        click.echo(f"constraint evidence: {line}")
    cfg, r = loaded.config, loaded.recipe
    click.echo(
        f"{study}: study {cfg.name} OK - {r.model.name}, {len(loaded.space)} searched keys, "
        f"{samples} sampled configurations all valid; budget {cfg.budget.n_trials} trials of "
        f"up to {loaded.max_epochs} epochs, {cfg.executor} executor"
    )


@cli.command()
@click.argument("study", type=click.Path(path_type=Path, dir_okay=False), metavar="STUDY.yaml")
@click.option(
    "--trial",
    "which",
    default="best",
    show_default=True,
    help="'best' (the crowned finalist once a finalist stage ran, else the best feasible "
    "trial), 'search-best' (the search's own best) or a trial number.",
)
@click.option(
    "-o",
    "--out",
    required=True,
    type=click.Path(path_type=Path, dir_okay=False),
    help="Where to write the pinned recipe, e.g. recipes/effb2-best.yaml (a study's "
    "certified result: the ensemble file, its members in the folder of the same name).",
)
@click.option(
    "--weights",
    type=click.Path(path_type=Path, dir_okay=False),
    help="Also write the trial's best-epoch weights here (e.g. recipes/effb2-best.pt), to "
    "evaluate or deploy without retraining (a certified ensemble carries its members' "
    "weights).",
)
@click.option(
    "--top-k",
    type=click.IntRange(min=2),
    help="Export the K best feasible trials as one ensemble: -o names the ensemble file, its "
    "members (pinned recipes and weights) go in the folder of the same name.",
)
@click.option("--tta", is_flag=True, help="With --top-k: the ensemble averages flipped views.")
@click.option(
    "--register",
    metavar="NAME",
    help="Also register the export in MLflow's model registry as a new version of NAME: the "
    "pinned recipe, the weights (--weights) and the held-out evaluation with its operating "
    "points (the study's tracking.mlflow, or DRSEARCH_MLFLOW_URI).",
)
@_storage_opt
@_smoke_options
def export(
    study: Path,
    which: str,
    out: Path,
    weights: Path | None,
    top_k: int | None,
    tta: bool,
    register: str | None,
    storage: str | None,
    run_root: Path | None,
    smoke: bool,
) -> None:
    """Write a trial as a pinned training recipe that `drsearch train` retrains exactly (or,
    with --top-k, the best trials as an ensemble that `drsearch evaluate` measures).

    A study whose finalist stage crowned a finalist exports what it certified: that
    finalist's confirmation models (one per fold or seed) as one ensemble, with their weights
    and certificate; --trial N exports one trial instead."""
    from drsearch.search.database import open_existing
    from drsearch.search.export import export_weights, pinned_recipe, select_trial, write_pinned

    loaded = _open_study(study, storage, run_root, smoke)
    attrs = open_existing(loaded.config, loaded.path).user_attrs
    if register is not None:
        from drsearch.search.tracking import mlflow_uri

        if mlflow_uri(loaded) is None:
            raise UserError(
                f"--register needs an MLflow store: add tracking: {{mlflow: {{}}}} to {study} "
                "(a SQLite store beside the study) or set DRSEARCH_MLFLOW_URI"
            )
    certified = chosen = None
    if which == "best" and top_k is None:
        from drsearch.search.shipping import certified as certified_of

        chosen = select_trial(loaded, which)  # no winner: exit 3, said once, nothing written
        certified = certified_of(loaded)
    if certified is not None:
        _export_certified(loaded, certified, out, weights, tta, register, attrs)
        return
    if register is not None and (top_k is not None or weights is None):
        raise UserError("--register registers one trial with its weights: give --weights, "
                        "without --top-k")  # fmt: skip
    if top_k is not None:
        from drsearch.search.export import export_ensemble, ranked_trials

        if which != "best" or weights is not None:
            raise UserError("--top-k exports the best trials with their weights; drop --trial "
                            "and --weights")  # fmt: skip
        trials = ranked_trials(loaded, top_k)
        from drsearch.search.shipping import certified as certified_of

        if certified_of(loaded) is not None:
            click.echo("Warning: the study certified its crowned finalist's confirmation models; "
                       "--top-k exports search trials instead, not what was certified (drop "
                       "--top-k to export that)", err=True)  # fmt: skip
        views = ["identity", "hflip", "vflip"] if tta else ["identity"]
        files = export_ensemble(loaded, trials, out, views, attrs)
        click.echo(
            f"ensemble of trials {', '.join(str(t.number) for t in trials)} -> {out} "
            f"(members in {out.with_suffix('')}/: {', '.join(f.name for f in files)} and "
            "their weights)"
        )
        return
    if tta:
        raise UserError("--tta is for an ensemble (--top-k K, or a study's certified result)")
    if which != "best":
        from drsearch.search.shipping import certified as certified_of

        crowned = certified_of(loaded)
        if crowned is not None:
            click.echo(
                f"Warning: the study certified finalist {crowned.finalist}'s "
                f"{len(crowned.runs)} {crowned.mode[:-1]} models, not this one model (its figures "
                "are not the certificate's); drop --trial to export what was certified",
                err=True,
            )
    trial = chosen if chosen is not None else select_trial(loaded, which)
    recipe = pinned_recipe(loaded, trial, attrs.get(f"evaluation:trial{trial.number}"))
    write_pinned(recipe, out)
    value = "n/a" if trial.value is None else f"{trial.value:.4f}"
    click.echo(f"trial {trial.number} ({trial.state.name}, value {value}) -> {out}")
    if weights is not None:
        epoch = export_weights(trial, loaded.config.name, out, weights)
        click.echo(
            f"best-epoch weights (epoch {epoch}) -> {weights}; load them with "
            f"model.pretrained: {weights}"
        )
        given = "" if weights == out.with_suffix(".pt") else f" --weights {weights}"
        click.echo(f"grade new images: drsearch predict {out} IMAGES_FOLDER{given}")
    if register is not None and weights is not None:
        from drsearch.search.tracking import register_export

        evaluation = attrs.get(f"evaluation:trial{trial.number}")
        version, where = register_export(loaded, trial.number, [out, weights], evaluation, register)
        held = (
            "with its held-out evaluation"
            if evaluation
            else "without a held-out evaluation (run drsearch evaluate first to include one)"
        )
        click.echo(f"registered as {register} version {version} in {where}, {held}")


def _export_certified(
    loaded: Any, c: Any, out: Path, weights: Path | None, tta: bool, register: str | None,
    attrs: dict[str, Any],
) -> None:  # fmt: skip
    """Write the study's certified result (``search.shipping``) as an ensemble file."""
    from drsearch.search.export import export_ensemble

    if weights is not None:
        raise UserError(
            f"{loaded.path}: the study certified finalist {c.finalist}'s {len(c.runs)} "
            f"{c.mode[:-1]} models: -o {out} becomes their ensemble, with each member's weights in "
            f"{out.with_suffix('')}/; drop --weights (or export one trial, not what was "
            f"certified, with --trial {c.finalist} --weights FILE)"
        )
    views = ["identity", "hflip", "vflip"] if tta else ["identity"]
    files = export_ensemble(loaded, list(c.runs), out, views, attrs, certified=c)
    click.echo(
        f"certified result: finalist {c.finalist}'s {len(files)} {c.mode[:-1]} models as one "
        f"ensemble -> {out} (members in {out.with_suffix('')}/: "
        f"{', '.join(f.name for f in files)} and their weights)"
    )
    click.echo(f"grade new images: drsearch predict {shlex.quote(str(out))} IMAGES_FOLDER")
    if register is not None:
        from drsearch.search.tracking import register_export

        evaluation = attrs.get(f"evaluation:{c.tag}" + ("-tta" if tta else ""))
        folder = out.with_suffix("")
        version, where = register_export(
            loaded, c.finalist, [out, folder], evaluation, register,
            f"finalist {c.finalist}'s certified {c.mode[:-1]} ensemble",
        )  # fmt: skip
        held = (
            "with its held-out evaluation"
            if evaluation
            else "without a held-out evaluation (run drsearch evaluate first to include one)"
        )
        click.echo(f"registered as {register} version {version} in {where}, {held}")
