"""A methods paragraph for papers, written from what a study and its evaluation recorded.

What TRIPOD+AI and CLAIM ask a DR-grading paper to state about model development and
evaluation: the partitions (images and patients, how they were split), the search (space,
budget, configurations tried, pruning, sampler), the selection rule (objective, constraints
and how they were judged, the finalist stage), the operating-point rule, the interval
methods, and how often the test set was used. Plain text from plain data: the CLI gathers the
study's facts (``study_facts``), ``evaluate`` supplies its own record.
"""

from __future__ import annotations

from typing import Any

from drsearch.clinical import CONFIDENCE


def methods_paragraph(record: dict[str, Any], study: dict[str, Any] | None) -> str:
    """The paragraph for an evaluation ``record`` (``inspect.evaluate.evaluate``), with the
    facts of the study it came from (``None`` for an exported recipe evaluated on its own)."""
    data, what = record["data"], record["what"]
    parts = []
    split = (study or {}).get("split") or {}
    by_patient = (
        data.get("n_val_patients", data["n_val"]) < data["n_val"]
        or data.get("n_test_patients", data["n_test"]) < data["n_test"]
    )
    level = "at the patient level" if by_patient else "by image (no patient has two images)"
    parts.append(
        f"Images were partitioned {level} into training "
        f"({data.get('n_train', 'n/a')} images), validation ({data['n_val']} images, "
        f"{data.get('n_val_patients', data['n_val'])} patients) and a held-out test set "
        f"({data['n_test']} images, {data.get('n_test_patients', data['n_test'])} patients; "
        f"fingerprint {data['test_sha256'][:12]}), stratified by grade"
        + (f" (data seed {split['seed']})" if "seed" in split else "")
        + "; the test set was carved first and never seen by the search."
    )
    if split.get("cv_folds"):
        parts.append(
            f"The non-test images were dealt into {split['cv_folds']} patient-grouped, "
            "grade-stratified folds; the search validated on fold 0."
        )
    if study is not None:
        parts.append(_search(study))
        parts.append(_selection(study))
    models = ", ".join(what["models"])
    crowned = ((study or {}).get("finalists") or {}).get("crowned")
    cert = record.get("certificate")
    if cert is not None:
        models = (
            f"the study's certified result, configuration {cert['finalist']}'s "
            f"{len(cert['runs'])} {cert['mode'][:-1]} models ({models})"
        )
    elif study is not None and crowned is not None and what["trials"] != [crowned]:
        models += f" (not the study's selected model, trial {crowned})"
    ensemble = (
        " (an ensemble: the mean of their per-grade probabilities)" if what["ensemble"] else ""
    )
    views = ", ".join(what["views"])
    parts.append(
        f"The evaluated model was {models}{ensemble}, with test-time views {views}"
        + (", temperature-scaled on validation" if what["temperature_scaling"] else "")
        + "."
    )
    ops = record["operating_points"]
    targets = "; ".join(
        f"{name} (grade >= {op['grade_at_least']}): threshold {op['threshold']:.4f} on "
        f"P(grade >= {op['grade_at_least']}), chosen on validation for "
        + ", ".join(f"{k[7:]} {v:g}" for k, v in op.items() if k.startswith("target_"))
        for name, op in ops.items()
    )
    where = (
        "the pooled out-of-fold validation predictions (each image by the model that did not "
        "train on it)"
        if record["validation"].get("kind") == "out-of-fold"
        else "validation"
    )
    parts.append(f"Operating points were fixed on {where} before the test set was read: {targets}.")
    method = record["test"].get("interval_method", "Wilson / stratified bootstrap")
    parts.append(
        f"Intervals are {CONFIDENCE:.0%}: "
        + (
            "a bootstrap of patients (1,000 resamples, fixed seed) drawn within the strata of "
            "their worst grade, for every figure, as patients contribute several images (a "
            "proportion every resample agrees on, such as 40/40, gets Wilson's interval on the "
            "patients behind it)"
            if method == "patient bootstrap"
            else "Wilson score intervals for proportions, and a grade-stratified bootstrap "
            "(1,000 resamples, fixed seed) for AUC and quadratic weighted kappa"
        )
        + "."
    )
    uses = (study or {}).get("test_uses")
    if uses:
        parts.append(
            f"The test set has been used to evaluate {uses} candidate"
            + ("s" if uses > 1 else "")
            + (
                "; figures after the first are not unbiased estimates."
                if uses > 1
                else " (this one)."
            )
        )
    return " ".join(parts)


def _search(study: dict[str, Any]) -> str:
    counts = study["counts"]
    space = ", ".join(study["space"])
    pruner = study["pruner"]
    pruning = (
        f"asynchronous successive halving ({pruner['mode']} ASHA on {pruner['metric']}, "
        f"grace period {pruner['grace_period']} epochs, reduction factor "
        f"{pruner['reduction_factor']})"
        if pruner.get("enabled")
        else "no pruning"
    )
    if study.get("samplers"):  # the samplers its trials drew from, in order
        sampler = ", then ".join(f"{name} sampler" for name in study["samplers"])
    else:
        sampler = (
            f"its file names the {study['sampler']} sampler; the study holds no record of "
            "the sampler its trials drew from"
        )
    return (
        f"Hyperparameters were searched with Optuna ({sampler}; seed "
        f"{study['sampler_seed']}) over {len(study['space'])} parameters ({space}), with a "
        f"budget of {study['n_trials']} configurations ({counts['complete']} trained to the end, "
        f"{counts['pruned']} stopped early, {counts['failed']} failed) and {pruning}; each "
        f"configuration trained for up to {study['max_epochs']} epochs."
    )


def _selection(study: dict[str, Any]) -> str:
    objective = study["objective"]
    constraints = "; ".join(f"{c['metric']} >= {c['min']:g}" for c in objective["constraints"])
    rule = (
        f"its one-sided Wilson lower bound at {objective['confidence']:.0%} confidence"
        if objective["constraints_on"] == "lower_bound"
        else "its point estimate"
    )
    text = (
        f"Each configuration was scored on its best validation epoch by {objective['metric']}, "
        "required to beat the trivial model (every image the commonest grade) and to meet "
        f"{constraints or 'no further constraint'}, each judged on {rule}; shortfalls were "
        "penalised in standard errors."
    )
    finalists = study.get("finalists")
    if finalists:
        plan = finalists["plan"]
        how = (
            f"retrained on each of {plan['n']} folds and scored on the pooled out-of-fold "
            "predictions"
            if plan["mode"] == "folds"
            else f"retrained with {plan['n']} fresh seeds and scored on the average seed"
        )
        crowned = finalists.get("crowned")
        race = finalists.get("race")
        if plan.get("race") and race:
            unit = plan["mode"][:-1]
            how = (
                f"raced (search/racing.py): each retrained on one {unit} at a time, up to "
                f"{plan['n']}, more {unit}s going to those whose evidence was still open, "
                f"{race['spent']} retrainings of a cap of {race['cap']}, and scored on its "
                + ("pooled out-of-fold predictions" if unit == "fold" else "average seed")
            )
        text += (
            f" The top {plan['top_k']} configurations by validation score were {how}, at the "
            "epoch their search trial chose; the selected configuration is the best that met "
            "the constraints on this confirmation"
            + (
                f" (trial {crowned}), and what ships is exactly the models it was confirmed "
                "on, as one ensemble (the mean of their per-grade probabilities)."
                if crowned is not None
                else ", and none did."
            )
        )
    else:
        text += " The selected model is the search's best feasible configuration."
    return text
