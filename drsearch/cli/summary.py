"""What ``drsearch run`` says when a search ends: its summary and the next steps."""

from __future__ import annotations

from typing import Any

import click

from drsearch.fmt import short


def print_summary(s: Any) -> None:
    c = s.counts
    click.echo(
        f"study {s.name} ({s.storage}): {c.counted}/{s.n_trials} trials counted - "
        f"{c.complete} complete, {c.pruned} pruned, {c.failed} failed"
        + (f", {c.interrupted} interrupted (not counted)" if c.interrupted else "")
        + (f", {c.paused} paused at a rung (the next run goes on with them)" if c.paused else "")
    )
    d = s.deadline
    if d is not None and d.reached_at is not None:
        click.echo(
            f"time limit: {d.limit_s:g} s from the first trial's start, reached; no trial "
            f"started after it; the run ended {d.past_limit_s or 0:.0f} s past it"
            + (
                f"; trial(s) {', '.join(map(str, d.finished))} (the leader of the highest rung) "
                "trained to the end"
                if d.finished
                else ""
            )
            + (f"; the leader was not finished: {d.not_finished}" if d.not_finished else "")
        )
    elif d is not None:
        click.echo(f"time limit: {d.limit_s:g} s from the first trial's start, not reached")
    if s.paused:
        click.echo(
            "paused at a rung (the next run goes on with them): trials "
            + ", ".join(f"{n} (epoch {e})" for n, e in s.paused)
        )
    if s.reaped:
        click.echo(f"marked interrupted: trials {', '.join(map(str, s.reaped))}")
    if s.requeued:
        click.echo(
            f"interrupted earlier, queued again with their parameters: trials "
            f"{', '.join(map(str, s.requeued))} (from their checkpoints where an epoch finished)"
        )
    if s.given_up:
        from drsearch.search.store import MAX_INTERRUPTIONS

        click.echo(
            f"interrupted {MAX_INTERRUPTIONS} times in a row, not queued again: trials "
            f"{', '.join(map(str, s.given_up))} (--retry-failed queues them again; they run "
            "when the budget has room: --n-trials)"
        )
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
    for line in s.queued:
        click.echo(line)
    for reason, n in s.failures:
        click.echo(f"failed: {n} x {reason}")
    if s.provisional is not None:
        trial, epoch = s.provisional
        click.echo(
            f"no trial was trained to the end; provisionally best: trial {trial.number} by its "
            f"value at epoch {epoch} (not a winner)"
        )
    shown = s.best or s.closest
    if shown is not None:
        params = ", ".join(f"{k}={short(v)}" for k, v in shown.params.items())
        what = (
            "search best (feasible)"
            if s.best is not None
            else "no trial is feasible (no winner); the closest"
        )
        click.echo(f"{what}: trial {shown.number}, value {shown.value:.4f}; {params}")
        if s.best is None:
            for reason in shown.user_attrs.get("infeasible_reasons") or []:
                click.echo(f"  not feasible: {reason}")


def print_next_steps(
    named: str,
    s: Any,
    held_out: bool = False,
    finalists: bool = False,
    winner: bool = True,
    certified: bool = False,
) -> None:
    """Where to look next: the commands that open this study's results (``named``: the study
    file and the options that name it, ``common.study_args``); ``evaluate`` and ``export``
    only when the study names a winner (``search.verdict``: else ``print_no_winner`` says
    what to try)."""
    if s.best is None and s.closest is None and not s.counts.counted and not s.counts.paused:
        return
    click.echo("next steps:")
    steps = [
        (f"drsearch best {named}", "the study's best: figures, parameters, finalists"),
        (f"drsearch trials {named}", "every trial in a table"),
        (f"drsearch report {named}", "one HTML page: history, curves, per-grade figures"),
        (f"drsearch dashboard {named}", "optuna-dashboard on http://127.0.0.1:8080"),
    ]
    if (s.best or s.closest) is not None and not finalists:
        steps.append(
            (
                f"drsearch confirm {named}",
                "retrain the top 3 with fresh seeds: is the winner luck?",
            )
        )
    if winner and held_out:
        what = "the certified result" if certified else "the best trial"
        steps.append(
            (
                f"drsearch evaluate {named}",
                f"{what} on the held-out test set, with 95% intervals",
            )
        )
    smoke = "-smoke" if "--smoke" in named.split() else ""  # never over the real export
    if certified:  # what the finalist stage certified ships (search.shipping)
        steps.append(
            (
                f"drsearch export {named} -o recipes/{s.name}{smoke}-best.yaml",
                "the certified result: the crowned finalist's confirmation models as one "
                "ensemble, with weights (drsearch predict then grades images)",
            )
        )
    elif winner:
        steps.append(
            (
                f"drsearch export {named} -o recipes/{s.name}{smoke}-best.yaml "
                f"--weights recipes/{s.name}{smoke}-best.pt",
                "the best, pinned, with its weights (drsearch predict then grades images)",
            )
        )
    steps += s.tracking_steps  # mlflow ui ..., wandb sync ...
    width = max(len(cmd) for cmd, _ in steps)
    for cmd, what in steps:
        click.echo(f"  {cmd:<{width}}  # {what}")
