"""What optuna-dashboard shows about a study: notes (markdown) and per-trial artifacts.

The study note holds the definition (data, model, space, objective); each trial gets a note
with its objective, constraint status and per-grade table, and artifacts uploaded to Optuna's
artifact store before the trial is told (the order Optuna requires): predictions, the
per-epoch metrics, the confusion matrix, the LR trace of every group, and the config.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Callable
from pathlib import Path
from typing import Any

import optuna
from optuna.artifacts import FileSystemArtifactStore, upload_artifact

from drsearch import GRADES
from drsearch.config.study import LoadedStudy, StudyConfig
from drsearch.fmt import duration, num
from drsearch.io import read_jsonl, write_text_atomic
from drsearch.search.trial import Outcome


def artifact_store(loaded: LoadedStudy) -> FileSystemArtifactStore:
    from drsearch.io import owned_dir

    cfg = loaded.config
    folder = owned_dir(cfg.artifact_dir, cfg.run_root, "trial artifacts").resolve()
    return FileSystemArtifactStore(str(folder))


def annotate_study(
    study: optuna.Study, loaded: LoadedStudy, finalists: dict[str, Any] | None = None
) -> None:
    """The study's dashboard note: its definition and, once its finalist stage has run, the
    finalists and the crowned best."""
    from optuna_dashboard import save_note

    save_note(study, study_note(loaded) + finalists_note(finalists))


def finalists_note(record: dict[str, Any] | None) -> str:
    """The finalist stage as a markdown table (empty before it has run)."""
    if not record:
        return ""
    plan = record["plan"]
    crowned = record["crowned"]
    lines = [
        "",
        f"## Finalists: top {plan['top_k']}, confirmed on {plan['n']} {plan['mode']}",
        "",
        (
            f"**The study's best is trial {crowned}**, the best feasible confirmed finalist"
            if crowned is not None
            else "**No finalist meets the constraints on its confirmation: no winner is named**"
        )
        + f" (the search's own best: trial {record['search_best']}). The optimism gap is the "
        "search value minus the confirmed value.",
        "",
        "| trial | search value | confirmed value | optimism gap | feasible | confirmed on |",
        "|---|---|---|---|---|---|",
    ]
    for e in record["finalists"]:
        feasible = {True: "yes", False: "**no**", None: "-"}[e.get("feasible")]
        lines.append(
            f"| {e['trial']} | {num(e['search_value'])} | {num(e.get('confirmed_value'))} | "
            f"{num(e.get('optimism_gap'))} | {feasible} | {e.get('evidence', 'not confirmed')} |"
        )
    return "\n".join(lines) + "\n"


def annotate_trial(
    trial: optuna.Trial, outcome: Outcome, store: FileSystemArtifactStore, config: StudyConfig
) -> None:
    """Trial note and artifacts; call before the trial is told."""
    from optuna_dashboard import save_note

    save_note(trial, trial_note(trial.number, outcome, config))
    run_dir = Path(str(outcome.user_attrs.get("run_dir", "")))
    for path in trial_artifacts(run_dir, outcome):
        upload_artifact(artifact_store=store, file_path=str(path), study_or_trial=trial)


def note_and_artifacts(
    store: FileSystemArtifactStore, config: StudyConfig
) -> Callable[[optuna.Trial, Outcome], str | None]:
    """``StudyStore.before_tell`` for a study with an artifact store: a problem is returned (and
    recorded with the trial), never raised: a trained trial is never lost to an artifact."""

    def attach(trial: optuna.Trial, outcome: Outcome) -> str | None:
        try:
            Path(getattr(store, "_base_path", ".")).mkdir(parents=True, exist_ok=True)
            annotate_trial(trial, outcome, store, config)
        except Exception as exc:  # noqa: BLE001 - never lose a trained trial to an artifact
            return f"{type(exc).__name__}: {exc}".splitlines()[0]
        return None

    return attach


def trial_artifacts(run_dir: Path, outcome: Outcome) -> list[Path]:
    """Files to attach: the run's own outputs plus a confusion-matrix and an LR-trace CSV."""
    if not run_dir.is_dir():
        return []
    made = []
    cm = outcome.user_attrs.get("confusion_matrix")
    if cm:
        rows = [["true\\predicted", *GRADES], *([GRADES[i], *row] for i, row in enumerate(cm))]
        made.append(_write_csv(run_dir / "confusion_matrix.csv", rows))
    log = run_dir / "metrics.jsonl"
    if log.is_file():
        rows = [["epoch", "step_of_epoch", "group", "lr"]]
        for record in read_jsonl(log):
            for where, key in (("first", "lr_first"), ("last", "lr")):
                for group, lr in record.get(key, {}).items():
                    rows.append([record["epoch"], where, group, lr])
        made.append(_write_csv(run_dir / "lr_trace.csv", rows))
    own = [run_dir / n for n in ("predictions.csv", "metrics.jsonl", "config.yaml")]
    return [p for p in own if p.is_file()] + made


def _write_csv(path: Path, rows: list[list[Any]]) -> Path:
    out = io.StringIO()
    csv.writer(out).writerows(rows)
    write_text_atomic(path, out.getvalue())
    return path


def trial_note(number: int, outcome: Outcome, config: StudyConfig) -> str:
    """The trial's note in optuna-dashboard: markdown tables a DR reader can scan."""
    a = outcome.user_attrs
    if outcome.state == "FAIL":
        return f"## Trial {number}: FAIL\n\n{a.get('fail_reason', '')}\n"
    feasible = "feasible" if a.get("feasible") else "**infeasible**"
    if outcome.state == "PRUNED":
        epoch, planned = a.get("pruned_at_epoch"), a.get("epochs_planned", "?")
        head = [
            f"## Trial {number}: PRUNED at epoch {epoch} of {planned} ({feasible} so far)",
            "",
            f"The value the dashboard shows, {num(a.get('value_at_stop'))}, is the best "
            f"{config.pruner.metric} up to epoch {epoch}, where ASHA stopped the trial (Optuna "
            "keeps a pruned trial's last reported value). Its objective on its best epoch so "
            f"far (epoch {a.get('best_epoch')}) was {num(a.get('objective_so_far'))}; the "
            f"figures below are from that epoch.",
        ]
    else:
        head = [
            f"## Trial {number}: COMPLETE, objective {num(outcome.value)} ({feasible})",
            "",
            f"Objective: {config.objective.metric} on the best epoch "
            f"({a.get('best_epoch')} of {a.get('epochs_completed')}), minus the penalty when a "
            "constraint fails. The figures below are from that epoch, on the validation split.",
        ]
    rule = config.objective.constraints_on
    bound = f"{config.objective.confidence:.0%} lower bound" if rule == "lower_bound" else "-"
    lines = [
        *head,
        "",
        f"| constraint | required | observed (images) | {bound} | met | 95% view |",
        "|---|---|---|---|---|---|",
    ]
    judged = {j["name"]: j for j in a.get("constraint_judgements") or []}
    for c in config.objective.constraints:
        j = judged.get(c.name, {})
        counts = (
            f" ({j['successes']:g}/{j['n']:g})"
            if j.get("successes") is not None
            else (f" (n={j['n']:g})" if j.get("n") else "")
        )
        met = "yes" if j.get("met") else "**no**"
        if j.get("basis"):  # the bound as computed reads otherwise: say what decided
            met += f" ({j['basis']})"
        lines.append(
            f"| {c.metric} | >= {c.min:g} | {num(j.get('value', a.get(c.metric)))}{counts} | "
            f"{num(j.get('lower'))} | {met} | {j.get('result', '-')} |"
        )
    if a.get("trivial_value") is not None:
        lines.append(
            f"| {config.objective.metric} beats the trivial model | > "
            f"{num(a.get('trivial_value'))} | {num(a.get('objective_primary'))} | - | "
            f"{'yes' if a.get('objective_primary', 0) > a.get('trivial_value') else '**no**'} "
            "| - |"
        )
    for reason in a.get("infeasible_reasons") or []:
        lines.append(f"\nInfeasible: {reason}")
    lines += [
        "",
        "| grade | sensitivity | Wilson 95% lower | specificity | images |",
        "|---|---|---|---|---|",
    ]
    sens = a.get("sensitivity") or [None] * 5
    low = a.get("sensitivity_wilson_lower") or [None] * 5
    spec = a.get("specificity") or [None] * 5
    support = a.get("support") or [None] * 5
    for g, name in enumerate(GRADES):
        lines.append(
            f"| {g} {name.replace('_', ' ')} | {num(sens[g])} | {num(low[g])} | {num(spec[g])} "
            f"| {support[g]} |"
        )
    lines += ["", "| summary | value |", "|---|---|"]
    lines += [
        f"| accuracy | {num(a.get('accuracy'))} |",
        f"| quadratic weighted kappa | {num(a.get('qwk'))} |",
        f"| referable DR AUC | {num(a.get('referable_auc'))} |",
        f"| trainable parameters | {_count(a.get('trainable_params'))} |",
        f"| trial wall time | {duration(a.get('wall_seconds'))} |",
    ]
    gpu_hours, cost = config.compute_cost(float(a.get("wall_seconds") or 0.0))
    if config.resources.gpus_per_trial:
        priced = "no price set" if cost is None else f"{cost:.2f} {config.report.currency}"
        lines.append(f"| GPU hours (cost) | {gpu_hours:.3f} ({priced}) |")
    lr_groups = a.get("lr_groups") or {}
    if lr_groups:
        lines += ["", "| parameter group | LR at the end of the last epoch |", "|---|---|"]
        lines += [f"| {g} | {lr:.3g} |" for g, lr in lr_groups.items()]
    lines += ["", f"Run folder: `{a.get('run_dir')}`"]
    return "\n".join(lines) + "\n"


def _count(n: Any) -> str:
    return "-" if n is None else f"{int(n):,}"


def study_note(loaded: LoadedStudy) -> str:
    cfg, r = loaded.config, loaded.recipe

    def fixed(key: str, value: Any) -> str:
        """A base-recipe value, or that the search varies it (never the base value then)."""
        return "searched (below)" if key in loaded.space else str(value)

    constraints = "; ".join(f"{c.metric} >= {c.min}" for c in cfg.objective.constraints)
    space = "\n".join(
        f"- `{k}`: {_describe(p.model_dump(mode='json'))}" for k, p in loaded.space.items()
    )
    return (
        f"## {cfg.name}\n\n"
        f"**Data**: {r.data.kind} at `{r.data.root}`, "
        f"{fixed('data.image_size', r.data.image_size)} px, validation "
        f"fraction {r.data.val_fraction}, held-out test fraction {r.data.test_fraction} "
        f"(seed {r.data.seed}).\n\n"
        "**Every figure here is on the validation split** the search pruned and ranked on "
        "(optimistic). The held-out test split is measured only by `drsearch evaluate`.\n\n"
        f"**Model**: `{fixed('model.name', r.model.name)}`, pretrained: "
        f"{fixed('model.pretrained', r.model.pretrained)}; "
        f"{fixed('train.epochs', r.train.epochs)} epochs, batch "
        f"{fixed('train.batch_size', r.train.batch_size)}.\n\n"
        f"**Objective**: maximise {cfg.objective.metric} on the best epoch; constraints: "
        f"{constraints or 'none'}, each met on its "
        f"{_rule(cfg)}; the metric must beat the trivial model (every image the commonest "
        "grade). An infeasible trial scores the metric minus 0.1 of its range per standard "
        "error of shortfall.\n\n"
        f"**Pruner**: ASHA ({cfg.pruner.mode}) on {cfg.pruner.metric}, "
        f"grace {cfg.pruner.grace_period}, "
        f"reduction {cfg.pruner.reduction_factor}; **sampler** {cfg.sampler.label()} "
        f"(seed {cfg.sampler.seed}); **budget** {cfg.budget.n_trials} trials.\n\n"
        f"**Search space**:\n{space}\n"
    )


def _rule(cfg: Any) -> str:
    o = cfg.objective
    if o.constraints_on == "point":
        return "point estimate"
    return f"one-sided Wilson lower bound at {o.confidence:.0%} confidence"


def _describe(p: dict[str, Any]) -> str:
    when = f" when {p['when']}" if p.get("when") else ""
    if p["type"] == "categorical":
        return f"one of {p['choices']}{when}"
    log = ", log" if p.get("log") else ""
    return f"{p['type']} in [{p['low']}, {p['high']}]{log}{when}"
