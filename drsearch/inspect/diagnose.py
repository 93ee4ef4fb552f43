"""``drsearch diagnose``: what a run's own records say went wrong, with numbers.

Reads a run folder (``config.yaml``, ``metrics.jsonl``, ``run.json``, ``resumes.jsonl``) and
reports findings a person would otherwise guess at: the LR actually used against the
configured one per group, a widening train/validation gap or a plateau, a regression right
after a resume, augmentation switched off in a phase, and per-grade sensitivity far below
overall accuracy. Each finding has a severity, the evidence and what to change.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from drsearch.clinical import MEDICAL_GAP, STABLE_EPOCHS, stability
from drsearch.config.loading import load_recipe
from drsearch.config.recipe import Recipe
from drsearch.errors import ConfigError
from drsearch.fmt import num, sci
from drsearch.io import read_jsonl

GAP_WIDE = 0.15  # train - validation accuracy
REGRESSION = 0.05  # validation accuracy drop right after a resume


@dataclass
class Finding:
    severity: str  # "high", "medium", "low" or "info"
    title: str
    evidence: str
    advice: str


@dataclass
class Run:
    recipe: Recipe
    log: list[dict[str, Any]]
    resumes: list[dict[str, Any]]


def load_run(run_dir: Path) -> Run:
    config, metrics = run_dir / "config.yaml", run_dir / "metrics.jsonl"
    if not config.is_file() or not metrics.is_file():
        raise ConfigError(f"{run_dir}: not a run folder (needs config.yaml and metrics.jsonl)")
    log = read_jsonl(metrics)
    if not log:
        raise ConfigError(f"{metrics}: no epoch logged yet")
    resumes = read_jsonl(run_dir / "resumes.jsonl")
    return Run(load_recipe(config), log, resumes)


def diagnose(run_dir: Path) -> list[Finding]:
    run = load_run(run_dir)
    findings = [
        *_lr(run),
        *_gap_and_plateau(run),
        *_resumes(run),
        *_augmentation(run),
        *_medical_gap(run),
        *_swing(run),
    ]
    if not findings:
        last = run.log[-1]["val"]
        findings.append(
            Finding(
                "info",
                "healthy run",
                f"{len(run.log)} epochs; final validation accuracy "
                f"{num(last.get('accuracy'))}, QWK {num(last.get('qwk'))}; LR, gap, "
                "resumes, augmentation and per-grade sensitivity look normal",
                "nothing to change",
            )
        )
    order = {"high": 0, "medium": 1, "low": 2, "info": 3}
    return sorted(findings, key=lambda f: order[f.severity])


def _lr(run: Run) -> list[Finding]:
    out = []
    r, log = run.recipe, run.log
    lr = r.optim.lr
    heads = [
        (rec["epoch"], rec.get("lr_first", {}).get("head"), rec.get("lr", {}).get("head"))
        for rec in log
    ]
    peak = max(v for _, a, b in heads for v in (a, b) if v is not None)
    warm = r.schedule.warmup_epochs
    if warm >= 0.3 * r.train.epochs:
        out.append(
            Finding(
                "high" if peak < 0.99 * lr else "medium",
                "warmup takes most of the run",
                f"warmup_epochs {warm:g} of {r.train.epochs} epochs ({warm / r.train.epochs:.0%}); "
                f"head LR by epoch: " + ", ".join(f"{e}: {b:.2e}" for e, _, b in heads if b),
                "shorten schedule.warmup_epochs (1-2 epochs, or ~5% of training)",
            )
        )
    if peak < 0.99 * lr:
        out.append(
            Finding(
                "high",
                "the configured LR is never reached",
                f"optim.lr {lr:g}, highest head LR logged {peak:.3e} ({peak / lr:.0%})",
                "check warmup and schedule; `drsearch lr RECIPE` shows the plan",
            )
        )
    mult = r.optim.backbone_lr_mult
    if mult < 0.999:
        backbone = log[-1].get("lr", {}).get("backbone")
        out.append(
            Finding(
                "medium" if mult <= 0.2 else "low",
                f"the backbone trains at {mult:.2g}x the head LR",
                f"optim.backbone_lr_mult {mult:.3g}: last epoch backbone LR {sci(backbone, 2)} "
                f"vs head {sci(log[-1].get('lr', {}).get('head'), 2)}; a log of param_groups[0] "
                "alone would "
                "show only one of them",
                "intended for fine-tuning pretrained weights; from scratch use 1.0",
            )
        )
    jumps = [
        rec["epoch"]
        for prev, rec in zip(log, log[1:], strict=False)
        if rec.get("lr_first", {}).get("head", 0) > 1.5 * prev.get("lr", {}).get("head", 1)
    ]
    if jumps:
        drops = [_val_drop(log, e) for e in jumps]
        out.append(
            Finding(
                "medium" if any(d > REGRESSION for d in drops) else "low",
                "the LR jumps back up during training (warm restarts)",
                f"schedule {r.schedule.name}: LR restarts at epoch(s) "
                f"{', '.join(map(str, jumps))}; "
                "validation accuracy change at each: " + ", ".join(f"{-d:+.3f}" for d in drops),
                "if restarts were not intended use schedule.name: cosine; otherwise expect dips",
            )
        )
    return out


def _gap_and_plateau(run: Run) -> list[Finding]:
    out = []
    log = run.log
    gaps = [
        (rec["epoch"], rec["train"]["accuracy"] - (rec["val"].get("accuracy") or 0)) for rec in log
    ]
    losses = [(rec["epoch"], rec["val"].get("loss")) for rec in log]
    best_loss_epoch = min((x for x in losses if x[1] is not None), key=lambda x: x[1])[0]
    last_gap = gaps[-1][1]
    if (
        last_gap > GAP_WIDE
        and last_gap - min(g for _, g in gaps) > 0.1
        and (best_loss_epoch < log[-1]["epoch"])
    ):
        out.append(
            Finding(
                "high",
                f"overfitting since epoch {best_loss_epoch}",
                f"train - validation accuracy gap grew to {last_gap:.3f} (from "
                f"{min(g for _, g in gaps):.3f}); validation loss lowest at epoch "
                f"{best_loss_epoch} "
                f"({num(dict(losses)[best_loss_epoch])}) and {num(losses[-1][1])} at the end",
                "more augmentation or MixUp/CutMix, weight decay or dropout, early stopping "
                "(train.patience), or fewer epochs",
            )
        )
    monitor = run.recipe.train.monitor
    values = [(rec["epoch"], rec["val"].get(monitor)) for rec in log]
    values = [(e, v) for e, v in values if v is not None]
    if len(values) >= 4:
        sign = -1 if monitor == "loss" else 1
        best_epoch = max(values, key=lambda x: sign * x[1])[0]
        stale = log[-1]["epoch"] - best_epoch
        if stale >= max(3, len(log) // 3):
            out.append(
                Finding(
                    "medium",
                    f"plateau since epoch {best_epoch}",
                    f"best {monitor} {num(dict(values)[best_epoch])} at epoch {best_epoch}; "
                    f"no improvement in the {stale} epochs after",
                    "stop earlier (train.patience) or change the LR schedule",
                )
            )
    return out


def _resumes(run: Run) -> list[Finding]:
    out = []
    by_epoch = {rec["epoch"]: rec for rec in run.log}
    for resume in run.resumes:
        k = resume["epoch"]
        before, after = by_epoch.get(k), by_epoch.get(k + 1)
        if not before or not after:
            continue
        out += _multiplier_change(k, before.get("lr", {}), after.get("lr_first", {}))
        drop = (before["val"].get("accuracy") or 0) - (after["val"].get("accuracy") or 0)
        loss_jump = after["train"]["loss"] / max(before["train"]["loss"], 1e-12)
        if drop > REGRESSION or loss_jump > 1.3:
            changed = ", ".join(resume.get("changed", {})) or "none"
            out.append(
                Finding(
                    "high",
                    f"regression right after the resume at epoch {k}",
                    f"validation accuracy {num(before['val'].get('accuracy'))} -> "
                    f"{num(after['val'].get('accuracy'))}, train loss "
                    f"{before['train']['loss']:.4f} -> {after['train']['loss']:.4f} "
                    f"({loss_jump:.2f}x); recipe keys changed at the resume: {changed}",
                    "resume from a full checkpoint (optimizer, schedule, scaler, EMA) and keep the "
                    "recipe unchanged; a reset optimizer re-warms Adam's moments at full LR",
                )
            )
    return out


def _multiplier_change(k: int, before: dict[str, float], after: dict[str, float]) -> list[Finding]:
    """The backbone/head LR ratio (the backbone multiplier) at the last step before a resume
    and the first step after it: it only changes when the recipe did."""
    if not all(before.get(g) and after.get(g) for g in ("backbone", "head")):
        return []
    was, now = before["backbone"] / before["head"], after["backbone"] / after["head"]
    if abs(now - was) <= 0.01 * max(was, now):
        return []
    return [
        Finding(
            "high",
            f"backbone LR multiplier changed at the resume at epoch {k}",
            f"backbone/head LR {was:.3g} before (epoch {k}, last step) and {now:.3g} after "
            f"(epoch {k + 1}, first step): backbone {before['backbone']:.3g} -> "
            f"{after['backbone']:.3g}, head {before['head']:.3g} -> {after['head']:.3g}",
            "a resumed run continues the trial it came from: keep optim.backbone_lr_mult; to "
            "try another multiplier, start a new run from the checkpoint's weights",
        )
    ]


def _augmentation(run: Run) -> list[Finding]:
    for prev, rec in zip(run.log, run.log[1:], strict=False):
        if prev.get("augmentations") and not rec.get("augmentations"):
            return [
                Finding(
                    "high",
                    f"training augmentation switched off from epoch {rec['epoch']}",
                    f"epoch {prev['epoch']} ({prev.get('image_size')} px) trained with "
                    f"{', '.join(prev['augmentations'])}; epoch {rec['epoch']} "
                    f"({rec.get('image_size')} px) with none",
                    "keep training augmentation in every phase (a high-resolution phase is not "
                    "test-time preprocessing)",
                )
            ]
    return []


#: Grade names as a reader says them.
GRADE_NAMES = ("no DR", "mild", "moderate", "severe NPDR", "PDR")


def _medical_gap(run: Run) -> list[Finding]:
    """Each grade whose sensitivity at the best epoch is far below overall accuracy: high for
    the referable grades (2-4; a missed one is a patient not referred), medium for 0-1."""
    best_epoch = run.log[-1].get("best_epoch") or run.log[-1]["epoch"]
    best = next((r for r in run.log if r["epoch"] == best_epoch), run.log[-1])["val"]
    acc = best.get("accuracy")
    sens = best.get("sensitivity") or []
    support = best.get("support") or [None] * len(GRADE_NAMES)
    out = []
    for grade, name in enumerate(GRADE_NAMES):
        s = sens[grade] if len(sens) > grade else None
        if acc is None or s is None or acc - s <= MEDICAL_GAP:
            continue
        n = support[grade] if len(support) > grade else None
        counted = f"{round(s * n)}/{n} images" if n else "an unknown number of images"
        never = " (never called)" if s == 0 else ""
        out.append(
            Finding(
                "high" if grade >= 2 else "medium",
                f"{name} sensitivity far below overall accuracy",
                f"best epoch {best_epoch}: accuracy {acc:.3f} but {name} (grade {grade}) "
                f"sensitivity {s:.3f}: {counted}{never}",
                f"raise loss.class_weights for grade {grade}, use focal loss, or optimise a "
                "study with medical-grade constraints"
                + ("" if grade >= 2 else "; a grader that never says mild confuses follow-up"),
            )
        )
    return out


def _swing(run: Run) -> list[Finding]:
    """The checklist's "stable convergence" item failing on validation accuracy that goes
    down and up (a steady climb spans many points too, and is no swing)."""
    item = stability(run.log)
    accs = [r["val"].get("accuracy") for r in run.log[-STABLE_EPOCHS:]]
    if item.result != "fail" or None in accs:
        return []
    drops = [(a - b, i) for i, (a, b) in enumerate(zip(accs, accs[1:], strict=False))]
    drop, at = max(drops)
    if drop <= 0:
        return []
    first = run.log[-STABLE_EPOCHS:][at]["epoch"]
    return [
        Finding(
            "medium",
            f"validation accuracy swings {item.observed:.1f} points at the end of training",
            f"{item.detail} over epochs {run.log[-len(accs)]['epoch']}-{run.log[-1]['epoch']}: "
            f"down {100 * drop:.1f} points from epoch {first} to {first + 1}; the checklist's "
            f"stable convergence item ({item.threshold}) fails",
            "the best epoch is then partly picked by noise: decay the LR further at the end "
            "(schedule.min_lr), average the weights (train.ema: true), validate on more images, "
            "or confirm the winner on folds or seeds (finalists:)",
        )
    ]


def _val_drop(log: list[dict[str, Any]], epoch: int) -> float:
    by_epoch = {r["epoch"]: r["val"].get("accuracy") or 0 for r in log}
    return by_epoch.get(epoch - 1, 0) - by_epoch.get(epoch, 0)
