"""``drsearch evaluate``: best-epoch weights on the held-out test set, as a reviewer reads it.

One or more trained models (a study's best trial, a trial number, its top-k feasible trials as
an ensemble, or an exported recipe with its weights) predict on the recipe's validation split
and on its test split, which no search ever saw. Validation chooses what may be chosen (the
operating-point thresholds on ``P(grade >= k)``, the grade thresholds of a regression or
ordinal head, the temperature); the test split is then measured once with those choices
frozen: accuracy, QWK, per-grade and endpoint sensitivity/specificity/AUC with 95% intervals
(``stats``), calibration, and the medical-grade checklist judged on the test figures (its
training criterion, stable convergence on validation epochs, apart).

An ensemble averages its members' per-grade probabilities (each after its own temperature,
when temperature scaling is on, and on images prepared by its own recipe: image size and
preprocessing, ``inspect.members``); its grade is the most probable one. Test-time augmentation
averages each model's raw outputs over flipped views (``train.predict.VIEWS``).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from drsearch.clinical import (
    CONFIDENCE,
    ENDPOINTS,
    NUM_CLASSES,
    TARGET_SENSITIVITY,
    checklist,
    stability,
)
from drsearch.config.recipe import Recipe
from drsearch.data.records import ImageRecord
from drsearch.errors import ConfigError, DataError
from drsearch.inspect import stats
from drsearch.inspect.members import combine_members, validation_side
from drsearch.train.batches import Split
from drsearch.train.predict import TrainedModel


@dataclass
class Options:
    """What ``evaluate`` chooses on validation and how it measures."""

    target_sensitivity: float | None = TARGET_SENSITIVITY
    target_specificity: float | None = None
    views: tuple[str, ...] = ("identity",)
    temperature: bool = False
    seed: int = stats.BOOTSTRAP_SEED
    device: str = "cpu"

    def target(self) -> tuple[str, float]:
        if self.target_specificity is not None:
            return "specificity", self.target_specificity
        return "sensitivity", self.target_sensitivity or TARGET_SENSITIVITY


@dataclass
class EvalImages:
    """Validation and test images prepared one way (a recipe's image size and preprocessing),
    with their labels and patients (an image's own id when its patient is unknown)."""

    val: Split
    test: Split
    skipped_test: int
    val_patients: list[str]
    test_patients: list[str]
    test_duplicates: int = 0  # test images whose exact file content is also in training
    val_ids: list[str] = field(default_factory=list)
    test_ids: list[str] = field(default_factory=list)
    test_paths: list[str] = field(default_factory=list)


def evaluate(
    members: list[TrainedModel], options: Options, stored_points: dict[str, Any] | None = None
) -> dict[str, Any]:
    """The evaluation record of ``members`` (one model, or an ensemble of several);
    ``stored_points``: operating points an exported recipe or ensemble carries, used as they
    are instead of being chosen again."""
    if not members:
        raise ConfigError("nothing to evaluate: no trained model was selected")
    test_records = held_out_records(members[0])
    test_sha = _same_test_set(members, test_records)
    val_probs, test_probs, infos = [], [], []
    # each member's own images: its split (a fold model validates on its own fold) and its
    # preparation (image size, preprocessing): its whole data section, each made once
    cache: dict[str, EvalImages] = {}
    member_sides = []
    for m in members:
        key = m.recipe.data.model_dump_json()
        if key not in cache:
            cache[key] = load_sides(m.recipe, test_records)
        member_sides.append(cache[key])
    _same_images(members, member_sides)
    for m, member_side in zip(members, member_sides, strict=True):
        v, t, info = _member_probabilities(m, member_side, options)
        val_probs.append(v)
        test_probs.append(t)
        infos.append(info)
    sides = member_sides[0]
    val = validation_side(member_sides, val_probs, [i.pop("val_pred") for i in infos])
    test_p, test_pred = combine_members(test_probs, [i.pop("test_pred") for i in infos])
    operating_points = _operating_points(val.labels, val.probs, options, stored_points)
    thresholds = {name: op["threshold"] for name, op in operating_points.items()}
    validation = _figures(
        val.labels, val.probs, val.preds, thresholds, options, False, val.patients
    )
    validation["predictions"]["ids"] = val.ids
    validation["kind"] = val.kind
    test = _figures(
        sides.test.labels, test_p, test_pred, thresholds, options, True, sides.test_patients
    )
    test["predictions"] |= {"ids": sides.test_ids, "paths": sides.test_paths}
    test["severe_misses"] = severe_misses(test["predictions"], operating_points)
    for name, op in operating_points.items():  # what the chosen threshold rests on
        op["validation_at_threshold"] = validation["endpoints"][name]["at_operating_point"]
    return {
        "what": {
            "models": [m.label for m in members],
            "trials": [m.trial for m in members if m.trial is not None],
            "ensemble": len(members) > 1,
            "views": list(options.views),
            "temperature_scaling": options.temperature,
        },
        "data": {
            "n_val": int(len(val.labels)),
            "n_test": int(len(sides.test.labels)),
            "n_train": members[0].fingerprint.get("n_train"),
            "n_val_patients": len(set(val.patients)),
            "n_test_patients": len(set(sides.test_patients)),
            "test_sha256": test_sha,
            "skipped_test_images": sides.skipped_test,
            "test_duplicates_of_train": sides.test_duplicates,
        },
        "confidence": CONFIDENCE,
        "operating_points": operating_points,
        "members": infos,
        "validation": validation,
        "test": test,
        "checklist": [c.as_dict() for c in checklist(test["metrics"], [], "test")],
        "training_checklist": training_checklist(members),
    }


def training_checklist(members: list[TrainedModel]) -> list[dict[str, Any]]:
    """The checklist's training criterion, stable convergence (``clinical.stability``): each
    member's validation accuracy over its last epochs, in points. Judged on validation epochs
    during training, it is no test-set result and is kept apart from the test checklist."""
    out = []
    for m in members:
        item = stability(m.log)
        if len(members) > 1:
            item.name += f" ({m.label})"
        out.append(item.as_dict())
    return out


def held_out_records(member: TrainedModel) -> list[ImageRecord]:
    """The test records the member's recipe holds out (labels read, no image decoded)."""
    from drsearch.data.records import Skipped
    from drsearch.data.sources import load_records
    from drsearch.data.split import held_out_indices

    d = member.recipe.data
    try:
        loaded = load_records(d, Skipped())
    except DataError as exc:
        if d.root.is_absolute():
            raise
        raise DataError(  # an exported recipe's relative paths: where it was exported
            f"{member.label}: {exc}; its data.root {d.root} is relative to the directory it "
            f"was exported in, not {Path.cwd()}: run drsearch from there, or make data.root "
            "absolute in its recipe (and export again: the weights pin the recipe's SHA-256)"
        ) from None
    test = [loaded[i] for i in held_out_indices(loaded, d.test_fraction, d.seed)]
    if not test:
        raise DataError(f"{member.label} was trained without a held-out test set; " + _NO_TEST)
    return test


def load_sides(recipe: Recipe, test: list[ImageRecord]) -> EvalImages:
    """The recipe's validation split (as its runs split it) and the ``test`` records, at the
    recipe's image size. Test images whose file content is also in training are counted and,
    with ``data.drop_val_duplicates``, dropped, as validation's are."""
    from drsearch.data.cache import build_cache, default_cache_dir
    from drsearch.data.content import content_ids
    from drsearch.data.records import Skipped
    from drsearch.train.prepare import prepare_data

    d = recipe.data
    size = d.image_size
    data = prepare_data(d.model_copy(update={"progressive": []}))
    skipped = Skipped()
    cache = build_cache(
        test, [size], d.cache, d.cache_max_gb, d.cache_dir, d.skip_bad, skipped, None,
        d.preprocess,
    )  # fmt: skip
    rows = np.flatnonzero(cache.usable)
    cache_dir = d.cache_dir or default_cache_dir()
    train_content = set(content_ids([data.records[i] for i in data.train_idx], cache_dir))
    test_content = content_ids([test[i] for i in rows], cache_dir)
    dup = np.array([c in train_content for c in test_content], dtype=bool)
    if d.drop_val_duplicates:
        rows = rows[~dup]
    labels = np.array([test[i].label for i in rows], dtype=np.int64)
    patient = [r.patient_id or r.id for r in data.records]
    return EvalImages(
        data.split("val", size),
        Split(cache.arrays[size], rows, labels),
        skipped.total,
        [patient[i] for i in data.val_idx],
        [test[i].patient_id or test[i].id for i in rows],
        int(dup.sum()),
        data.ids("val"),
        [test[i].id for i in rows],
        [str(test[i].path) for i in rows],
    )


_NO_TEST = (
    "set data.test_fraction (e.g. 0.15) or add a data source "
    "with use: test, then run the study again (its trials must not have trained on the test "
    "images)"
)


def _same_test_set(members: list[TrainedModel], test: list[ImageRecord]) -> str:
    """The test-set fingerprint every member held out; refuse a model that trained on test."""
    from drsearch.data.fingerprint import ids_sha256

    now = ids_sha256(r.id for r in test)
    for m in members:
        held = m.fingerprint.get("test_sha256")
        if not m.fingerprint.get("n_test") or held is None:
            raise DataError(
                f"{m.label} was trained without a held-out test set (every image was in its "
                "training or validation split, so no test figure of it would be honest); "
                + _NO_TEST
            )
        if held != now:
            raise DataError(
                f"{m.label} held out another test set ({held[:12]}) than the recipe gives now "
                f"({now[:12]}): data.test_fraction, data.seed or the images changed since it "
                "trained; evaluate with the recipe it was trained with"
            )
    return now


def _same_images(members: list[TrainedModel], sides: list[EvalImages]) -> None:
    """Every member's test images are the first member's (only how they are prepared may
    differ), so their probabilities average image by image; validation images are the same
    too, or (fold models) disjoint: ``validation_side``."""
    for m, s in zip(members[1:], sides[1:], strict=True):
        if s.test_ids != sides[0].test_ids:
            raise ConfigError(
                f"{m.label} tests on other images than {members[0].label} (their data "
                "settings differ beyond image size, preprocessing and fold); evaluate them apart"
            )


def _member_probabilities(
    m: TrainedModel, sides: EvalImages, options: Options
) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    from drsearch.train.heads import decode, grade_probabilities
    from drsearch.train.predict import predict, trained_model

    model = trained_model(m.recipe, m.state_dict)
    batch = m.recipe.train.eval_batch_size or 2 * m.recipe.train.batch_size
    val_out = predict(model, sides.val, batch, options.views, options.device)
    test_out = predict(model, sides.test, batch, options.views, options.device)
    head = m.recipe.model.head
    stored = m.stored or {}
    fixed = m.recipe.model.thresholds or stored.get("grade_thresholds")
    _, val_pred, cuts = decode(head, val_out, sides.val.labels, fixed)
    temperature = 1.0  # a regression head's output is the grade itself: never scaled
    if stored.get("temperature") is not None:
        temperature = float(stored["temperature"])
    elif options.temperature and head != "regression":
        temperature = stats.fit_temperature(
            val_out, sides.val.labels, lambda o: grade_probabilities(head, o)
        )
    val_p = grade_probabilities(head, val_out / temperature)
    test_p, test_pred = grade_new_images(head, test_out, temperature, cuts)
    before = stats.calibration(grade_probabilities(head, test_out), sides.test.labels)["ece"]
    info = {
        "model": m.label,
        "trial": m.trial,
        "head": head,
        "grade_thresholds": cuts,
        "temperature": temperature,
        "test_ece_before_temperature": before,
        "val_pred": val_pred,
        "test_pred": test_pred,
    }
    return val_p, test_p, info


#: Grades whose misclassified test images the evaluation page shows (severe NPDR, PDR).
GALLERY_GRADES = (3, 4)


def severe_misses(
    predictions: dict[str, Any], operating_points: dict[str, dict[str, Any]]
) -> list[dict[str, Any]]:
    """The test images of ``GALLERY_GRADES`` given another grade: the most dangerous first
    (the highest true grade, then the lowest probability of referable DR), each with its
    probabilities and whether the operating points still refer it."""
    probs = np.asarray(predictions["probs"], dtype=np.float64)
    scores = endpoint_scores(probs)
    out = []
    for i, (label, pred) in enumerate(zip(predictions["label"], predictions["pred"], strict=True)):
        if label not in GALLERY_GRADES or pred == label:
            continue
        out.append({
            "id": predictions["ids"][i],
            "path": predictions["paths"][i],
            "label": int(label),
            "pred": int(pred),
            "p_label": float(probs[i, label]),
            "p_pred": float(probs[i, pred]),
            **{f"p_{name}": float(scores[name][i]) for name in ENDPOINTS},
            **{f"{name}_call": bool(scores[name][i] >= op["threshold"])
               for name, op in operating_points.items()},
        })  # fmt: skip
    return sorted(out, key=lambda m: (-m["label"], m["p_referable"]))


def grade_new_images(
    head: str, outputs: np.ndarray, temperature: float, cuts: list[float] | None
) -> tuple[np.ndarray, np.ndarray]:
    """Per-grade probabilities (after ``temperature``) and grades of one model's raw outputs on
    images no choice was made on (the test split, ``drsearch predict``'s new images): a
    regression or ordinal score is cut at ``cuts`` chosen elsewhere, never refitted."""
    from drsearch.train.heads import decode, grade_probabilities

    if head != "classification" and cuts is None:
        raise ConfigError(f"a {head} head needs its grade thresholds to grade new images")
    _, grades, _ = decode(head, outputs, np.zeros(len(outputs), dtype=int), cuts)
    return grade_probabilities(head, outputs / temperature), grades


def endpoint_scores(probs: np.ndarray) -> dict[str, np.ndarray]:
    """``P(grade >= k)`` of each endpoint (what an operating point's threshold cuts)."""
    return {name: probs[:, k:].sum(axis=1) for name, k in ENDPOINTS.items()}


def _operating_points(
    val_labels: np.ndarray,
    val_p: np.ndarray,
    options: Options,
    stored: dict[str, Any] | None,
) -> dict[str, dict[str, Any]]:
    """Per endpoint, the threshold on ``P(grade >= k)``: ``stored`` (as an exported recipe
    carries it), or chosen on this validation split for the target."""
    kind, target = options.target()
    out: dict[str, dict[str, Any]] = {}
    for name, k in ENDPOINTS.items():
        if stored and name in stored and stored[name].get("threshold") is not None:
            out[name] = dict(stored[name]) | {"from": "the exported file"}
            continue
        truth, score = val_labels >= k, val_p[:, k:].sum(axis=1)
        try:
            if kind == "sensitivity":
                threshold = stats.threshold_for_sensitivity(truth, score, target)
            else:
                threshold = stats.threshold_for_specificity(truth, score, target)
        except ValueError as exc:
            raise DataError(
                f"cannot choose the {name} operating point on validation: {exc} (grade >= {k}); "
                "the validation split needs images on both sides of the endpoint"
            ) from None
        out[name] = {
            "grade_at_least": k,
            "chosen_on": "validation",
            f"target_{kind}": target,
            "threshold": threshold,
        }
        counted = truth if kind == "sensitivity" else ~truth
        need = math.ceil(1 / (1 - target) - 1e-9) if target < 1 else None
        if need is not None and counted.sum() < need:
            side = "positive" if kind == "sensitivity" else "negative"
            out[name]["warning"] = (
                f"only {int(counted.sum())} {side} validation images for {name}: a {kind} "
                f"target of {target:g} is met only by missing none of them (one miss is "
                f"allowed from {need} images on), so the threshold rests on the extreme one"
            )
    return out


def _figures(
    labels: np.ndarray,
    probs: np.ndarray,
    preds: np.ndarray,
    thresholds: dict[str, float],
    options: Options,
    roc: bool,
    patients: list[str] | None = None,
) -> dict[str, Any]:
    """Every figure of one side, each with its 95% interval; with ``patients`` of several
    images, every interval comes from the patient bootstrap (``stats.resamples``)."""
    from drsearch.train.metrics import compute_metrics

    labels, preds = np.asarray(labels, dtype=int), np.asarray(preds, dtype=int)
    metrics = compute_metrics(labels, probs, preds)
    cm = np.asarray(metrics["confusion_matrix"])
    groups = patients if stats.clustered(patients) else None
    strata = labels if groups is not None else None
    seed = options.seed
    per_grade = []
    for g in range(NUM_CLASSES):
        truth, called = labels == g, preds == g
        per_grade.append({
            "grade": g,
            "n": int(truth.sum()),
            "sensitivity": stats.proportion_estimate(called, truth, labels, groups, seed).as_dict(),
            "specificity": stats.proportion_estimate(~called, ~truth, labels, groups, seed)
            .as_dict(),
        })  # fmt: skip
    endpoints = {}
    for name, k in ENDPOINTS.items():
        truth, score = labels >= k, probs[:, k:].sum(axis=1)
        called = preds >= k
        endpoints[name] = {
            "grade_at_least": k,
            "n_positive": int(truth.sum()),
            "auc": stats.auc_estimate(truth, score, seed, groups, strata).as_dict(),
            "at_predicted_grade": stats.at_calls(truth, called, strata, groups),
            "at_operating_point": stats.at_threshold(
                truth, score, thresholds[name], strata, groups
            ),
            **({"roc": stats.roc_points(truth, score)} if roc else {}),
        }
    everyone = np.ones(len(labels), dtype=bool)
    return {
        "n": int(cm.sum()),
        "n_patients": len(set(patients)) if patients is not None else int(cm.sum()),
        "interval_method": "patient bootstrap"
        if groups is not None
        else "Wilson / stratified bootstrap",
        "grade_counts": cm.sum(axis=1).tolist(),
        "accuracy": stats.proportion_estimate(
            preds == labels, everyone, labels, groups, seed
        ).as_dict(),
        "qwk": stats.qwk_estimate(labels, preds, seed, groups).as_dict(),
        "balanced_accuracy": metrics["balanced_accuracy"],
        "per_grade": per_grade,
        "endpoints": endpoints,
        "calibration": stats.calibration(probs, labels),
        "calibration_per_grade": stats.grade_calibration(probs, labels),
        "metrics": metrics,
        "predictions": {
            "label": labels.tolist(),
            "pred": preds.tolist(),
            "probs": np.round(probs, 6).tolist(),
        },  # fmt: skip
    }


def summary(record: dict[str, Any]) -> dict[str, Any]:
    """What the study keeps of an evaluation (and ``export`` pins): the choices made on
    validation and the headline test figures."""
    member = record["members"][0] if len(record["members"]) == 1 else {}
    test = record["test"]
    return {
        "operating_points": record["operating_points"],
        "temperature": member.get("temperature"),
        "grade_thresholds": member.get("grade_thresholds"),
        "members": [
            {k: m[k] for k in ("model", "trial", "temperature", "grade_thresholds")}
            for m in record["members"]
        ],
        "views": record["what"]["views"],
        "test_sha256": record["data"]["test_sha256"],
        "test": {
            "n": test["n"],
            "accuracy": test["accuracy"],
            "qwk": test["qwk"],
            **{
                f"{name}_{k}": test["endpoints"][name]["at_operating_point"][k]
                for name in ENDPOINTS
                for k in ("sensitivity", "specificity")
            },
            **{f"{name}_auc": test["endpoints"][name]["auc"] for name in ENDPOINTS},
        },
    }


def write_record(record: dict[str, Any], path: Path) -> None:
    from drsearch.io import write_text_atomic
    from drsearch.train.outputs import to_jsonable

    write_text_atomic(path, json.dumps(to_jsonable(record), indent=1) + "\n")
