"""The study's verdict: which trial it names best, on what ground, and, when it names none,
why and what to do next. Every command that shows or takes the study's best (``run``'s
summary and next steps, ``best``, ``export``, ``evaluate``, ``report``) reads it here, so "no
winner" is one outcome everywhere: said with its reasons, exit code 3.

There are three ways to name no winner: the finalist stage ran and no finalist held up on
confirmation (or some are not confirmed yet); the search has complete trials but none meets
the constraints; or no trial trained to the end (a time limit stopped the study with its
trials paused or pruned: then the best trial by its value at the highest rung is named
*provisionally*, never as a winner).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import optuna
from optuna.trial import FrozenTrial, TrialState

from drsearch.search.selection import (
    FINALISTS_ATTR,
    closest_infeasible,
    finalist_trials,
    search_best_trial,
)
from drsearch.search.trial import RANKED_ATTR
from drsearch.states import Status, status


@dataclass(frozen=True)
class Best:
    """The trial a study names best, and on what ground."""

    trial: FrozenTrial | None
    source: Literal["finalists", "search"]
    note: str = ""  # said beside it: stale finalists, no feasible finalist, ...


def study_best(study: optuna.Study) -> Best:
    """The study's best: the crowned finalist when a finalist stage has run (``None`` when no
    finalist is feasible on confirmation), else the search's best feasible trial."""
    record = study.user_attrs.get(FINALISTS_ATTR)
    if record is None:
        return Best(search_best_trial(study), "search")
    notes = []
    current = [t.number for t in finalist_trials(study, record["plan"]["top_k"])]
    if current != [e["trial"] for e in record["finalists"]]:
        notes.append(
            f"the finalists ({', '.join(str(e['trial']) for e in record['finalists'])}) were "
            f"confirmed when the study had {record['complete_trials_then']} complete trials; "
            f"its finalists are now {', '.join(map(str, current))}: run the study (or "
            "drsearch confirm) again to confirm them"
        )
    if record.get("objective") not in (None, study.user_attrs.get("objective")):
        notes.append(
            "the finalists were judged under another objective than the study's now "
            "(constraints, rule or confidence changed): run drsearch confirm again"
        )
    if record["pending"]:
        notes.append(
            f"finalist(s) {', '.join(map(str, record['pending']))} are not confirmed yet "
            "(runs missing, failed or unreadable): run the study again, or with --retry-failed"
        )
    crowned = record.get("crowned")
    if crowned is None:
        if not record["pending"]:
            notes.append("no finalist meets the constraints on its confirmation")
        return Best(None, "finalists", "; ".join(notes))
    return Best(study.trials[int(crowned)], "finalists", "; ".join(notes))


def provisional_best(study: optuna.Study) -> tuple[FrozenTrial, int] | None:
    """When no trial trained to the end (a time limit stopped the study with its trials paused
    or pruned): the trial of best value at the highest epoch any of them reached, and that
    epoch; ``None`` once a trial is complete, or before any epoch. Its value there is what the
    study ranks (the objective with the constraints' penalty), else its pruning value. Not a
    winner: it was never trained to the end, nor confirmed."""
    trials = study.get_trials(deepcopy=False)
    if any(t.state == TrialState.COMPLETE for t in trials):
        return None
    seen = [
        t
        for t in trials
        if status(t) in (Status.PAUSED, Status.PRUNED, Status.RUNNING) and t.intermediate_values
    ]
    if not seen:
        return None
    level = max(max(t.intermediate_values) for t in seen)
    here = [t for t in seen if level in t.intermediate_values]
    ranked = all(f"{RANKED_ATTR}{level}" in t.system_attrs for t in here)

    def value(t: FrozenTrial) -> float:
        return float(
            t.system_attrs[f"{RANKED_ATTR}{level}"] if ranked else t.intermediate_values[level]
        )

    return min(here, key=lambda t: (-value(t), t.number)), level


@dataclass(frozen=True)
class NoWinnerVerdict:
    """Why a study names no winner, what came closest, and what to try next."""

    why: str
    closest: str | None = None  # the trial that came closest, and why it falls short
    next_steps: list[tuple[str, str]] = field(default_factory=list)  # (what, why)


def no_winner(study: optuna.Study, command: str) -> NoWinnerVerdict | None:
    """Why the study names no winner (``None`` when it names one). ``command`` is how the
    study is named on the command line (``drsearch ... STUDY.yaml [--smoke ...]``), for the
    next steps."""
    chosen = study_best(study)
    if chosen.trial is not None:
        return None
    search = search_best_trial(study)
    caveat = (
        f"drsearch export {command} --trial search-best -o recipes/NAME.yaml",
        "the search's own best instead: its figures are optimistic (chosen on the images it "
        "was ranked on) and not confirmed",
    )
    if chosen.source == "finalists":
        record = study.user_attrs[FINALISTS_ATTR]
        if record["pending"]:
            return NoWinnerVerdict(
                chosen.note,
                None,
                [
                    (f"drsearch run {command}", "confirm the finalists still pending"),
                    (f"drsearch run {command} --retry-failed", "re-run their failed runs"),
                ],
            )
        short = [
            f"trial {e['trial']}: " + "; ".join(e.get("infeasible_reasons") or ["not feasible"])
            for e in record["finalists"]
        ]
        steps = [
            (
                "more validation evidence",
                "more images of grades 3 and 4, more folds (finalists.folds), or a larger "
                "data.val_fraction: a lower bound on few images cannot certify a minimum",
            ),
            (
                "lower minimums (objective.constraints)",
                "only if the clinical use allows it; the study's definition changes "
                "(--accept-changes)",
            ),
        ]
        if search is not None:
            steps.append(caveat)
        return NoWinnerVerdict(
            "no finalist meets the constraints on its confirmation", "; ".join(short), steps
        )
    provisional = provisional_best(study)
    if provisional is not None:
        trial, epoch = provisional
        return NoWinnerVerdict(
            "no trial was trained to the end (a time limit stopped the study with its trials "
            "paused or pruned)",
            f"trial {trial.number}, the best at epoch {epoch} (the highest any trial reached), "
            "named provisionally: not trained to the end, not a winner",
            [
                (f"drsearch run {command}", "continue: the paused trials go on"),
                (
                    "budget.finish_grace_s",
                    "unset or larger: at the time limit the leader is trained to the end",
                ),
                (
                    f"drsearch export {command} --trial {trial.number} -o recipes/NAME.yaml",
                    "take it as it is (its best epoch so far)",
                ),
            ],
        )
    closest = closest_infeasible(study)
    if closest is None:
        return NoWinnerVerdict(
            "no trial has finished yet", None, [(f"drsearch run {command}", "run the study")]
        )
    reasons = closest.user_attrs.get("infeasible_reasons") or ["not feasible"]
    return NoWinnerVerdict(
        "no complete trial meets the constraints",
        f"trial {closest.number} (value {closest.value:.4f}): {'; '.join(reasons)}",
        [
            (
                f"drsearch run {command} --n-trials N",
                "more trials (a larger budget than the study's now)",
            ),
            (
                "more validation evidence",
                "more images of grades 3 and 4 or a larger data.val_fraction: a lower bound "
                "on few images cannot certify a minimum",
            ),
            ("lower minimums (objective.constraints)", "only if the clinical use allows it"),
            (
                f"drsearch export {command} --trial {closest.number} -o recipes/NAME.yaml",
                "take the closest anyway, knowing it falls short",
            ),
        ],
    )
