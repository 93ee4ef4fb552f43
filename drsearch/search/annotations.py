"""What optuna-dashboard shows about a study: notes (markdown) and per-trial artifacts.

The study note holds the definition (data, model, space, objective); each trial gets a note
with its objective, constraint status and per-grade table, and artifacts uploaded to Optuna's
artifact store before the trial is told (the order Optuna requires): predictions, the
per-epoch metrics, the confusion matrix, the LR trace of every group, and the config.
"""

from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Any

import optuna
from optuna.artifacts import FileSystemArtifactStore, upload_artifact

from drsearch import GRADES
from drsearch.config.study import LoadedStudy
from drsearch.fmt import num
from drsearch.io import read_jsonl, write_text_atomic
from drsearch.search.trial import Outcome


def artifact_store(loaded: LoadedStudy) -> FileSystemArtifactStore:
    from drsearch.io import owned_dir

    cfg = loaded.config
    folder = owned_dir(cfg.artifact_dir, cfg.run_root, "trial artifacts").resolve()
    return FileSystemArtifactStore(str(folder))


def annotate_study(study: optuna.Study, loaded: LoadedStudy) -> None:
    from optuna_dashboard import save_note

    save_note(study, study_note(loaded))


def annotate_trial(trial: optuna.Trial, outcome: Outcome, store: FileSystemArtifactStore) -> None:
    """Trial note and artifacts; call before the trial is told."""
    from optuna_dashboard import save_note

    save_note(trial, trial_note(trial.number, outcome))
    run_dir = Path(str(outcome.user_attrs.get("run_dir", "")))
    for path in trial_artifacts(run_dir, outcome):
        upload_artifact(artifact_store=store, file_path=str(path), study_or_trial=trial)


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


def trial_note(number: int, outcome: Outcome) -> str:
    a = outcome.user_attrs
    if outcome.state == "FAIL":
        return f"## Trial {number}: FAIL\n\n{a.get('fail_reason', '')}\n"
    value = "" if outcome.value is None else f", objective {outcome.value:.4f}"
    lines = [
        f"## Trial {number}: {outcome.state}{value} "
        f"({'feasible' if a.get('feasible') else 'infeasible'})",
        "",
    ]
    lines += ["| constraint | shortfall | holds |", "|---|---|---|"]
    for name, short in (a.get("constraint_shortfalls") or {}).items():
        lines.append(f"| {name} | {short:.3f} | {'yes' if short <= 0 else '**no**'} |")
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
            f"| {g} {name} | {num(sens[g])} | {num(low[g])} | {num(spec[g])} | {support[g]} |"
        )
    lines += [
        "",
        f"accuracy {num(a.get('accuracy'))}, QWK {num(a.get('qwk'))}, best epoch "
        f"{a.get('best_epoch')} of {a.get('epochs_completed')}; final LR per group "
        f"{a.get('lr_groups')}; trainable parameters {a.get('trainable_params')}",
        "",
        f"Run folder: `{a.get('run_dir')}`",
    ]
    return "\n".join(lines) + "\n"


def study_note(loaded: LoadedStudy) -> str:
    cfg, r = loaded.config, loaded.recipe
    constraints = "; ".join(f"{c.metric} >= {c.min}" for c in cfg.objective.constraints)
    space = "\n".join(
        f"- `{k}`: {_describe(p.model_dump(mode='json'))}" for k, p in loaded.space.items()
    )
    return (
        f"## {cfg.name}\n\n"
        f"**Data**: {r.data.kind} at `{r.data.root}`, {r.data.image_size} px, validation "
        f"fraction {r.data.val_fraction} (seed {r.data.seed}).\n\n"
        f"**Model**: `{r.model.name}`, pretrained: {r.model.pretrained}; "
        f"{r.train.epochs} epochs, batch {r.train.batch_size}.\n\n"
        f"**Objective**: maximise {cfg.objective.metric} on the best epoch; constraints: "
        f"{constraints or 'none'} (infeasible trials score metric - (range + shortfalls)).\n\n"
        f"**Pruner**: ASHA on {cfg.pruner.metric}, grace {cfg.pruner.grace_period}, "
        f"reduction {cfg.pruner.reduction_factor}; **sampler** {cfg.sampler.name} "
        f"(seed {cfg.sampler.seed}); **budget** {cfg.budget.n_trials} trials.\n\n"
        f"**Search space**:\n{space}\n"
    )


def _describe(p: dict[str, Any]) -> str:
    when = f" when {p['when']}" if p.get("when") else ""
    if p["type"] == "categorical":
        return f"one of {p['choices']}{when}"
    log = ", log" if p.get("log") else ""
    return f"{p['type']} in [{p['low']}, {p['high']}]{log}{when}"
