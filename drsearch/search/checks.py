"""Checks before a study spends anything: its data and weights exist (a synthetic set is
generated once, here), its validation split can compute the metrics the objective and the
constraints need, and a sample of its configurations are valid recipes."""

from __future__ import annotations

from pathlib import Path

from drsearch.config.study import LoadedStudy
from drsearch.errors import ConfigError


def check_inputs(loaded: LoadedStudy, generate: bool = True) -> None:
    """Before any trial: the data and weights the recipe names exist, and a synthetic set is
    generated (once for the whole study, not once per trial; not at all without
    ``generate``)."""
    check_weights_exist(loaded)
    data = loaded.recipe.data
    singles = [
        (
            f"data.sources.{i}",
            data.model_copy(update={"kind": s.kind, "root": s.root, "csv": s.csv}),
        )
        for i, s in enumerate(data.sources)
    ] or [("data", data)]
    for key, single in singles:
        if single.kind == "synthetic":
            from drsearch.data.sources import ensure_synthetic

            if generate:
                ensure_synthetic(single)
            continue
        field, wanted = ("csv", single.csv) if single.kind == "csv" else ("root", single.root)
        if wanted is not None and not wanted.exists():
            raise ConfigError(
                f"{loaded.path}: {key}.{field}: {wanted} not found (relative paths in a study "
                f"and its recipe are read from the directory drsearch runs in, {Path.cwd()}); "
                "run drsearch from the folder the paths are relative to, or make them absolute"
            )
    check_metrics_computable(loaded)


#: The validation grades a metric needs to be defined at all (at least one image of one of
#: them): without, every trial would score it "undefined" and be infeasible without a word.
NEEDED_GRADES: dict[str, tuple[tuple[int, ...], ...]] = {
    "sensitivity_severe_npdr": ((3,),),
    "sensitivity_pdr": ((4,),),
    "referable_sensitivity": ((2, 3, 4),),
    "referable_specificity": ((0, 1),),
    "referable_auc": ((2, 3, 4), (0, 1)),
    "vtdr_sensitivity": ((3, 4),),
    "vtdr_specificity": ((0, 1, 2),),
}


def check_metrics_computable(loaded: LoadedStudy) -> None:
    """Refuse a study whose validation split (as the base recipe splits it, before any
    unreadable image is dropped) lacks the grades its objective or a constraint needs."""
    import numpy as np

    from drsearch.data.records import Skipped
    from drsearch.data.sources import load_records
    from drsearch.data.split import split_indices
    from drsearch.errors import DataError

    cfg = loaded.config
    wanted = [("objective.metric", cfg.objective.metric)] + [
        (f"objective.constraints.{i}", c.metric) for i, c in enumerate(cfg.objective.constraints)
    ]
    if not any(metric in NEEDED_GRADES for _, metric in wanted):
        return
    data = loaded.recipe.data
    try:
        records = load_records(data, Skipped())
        val = split_indices(records, data.val_fraction, data.seed, data.test_fraction).val
    except DataError:
        return  # the trials say what is wrong with the data, one line each
    counts = np.bincount([records[i].label for i in val], minlength=5)
    for key, metric in wanted:
        for grades in NEEDED_GRADES.get(metric, ()):
            if counts[list(grades)].sum() == 0:
                names = " or ".join(str(g) for g in grades)
                raise ConfigError(
                    f"{loaded.path}: {key}: {metric} is undefined on this validation split: "
                    f"it has no image of grade {names} (validation grade counts "
                    f"{counts.tolist()}); use data with such images, a larger "
                    "data.val_fraction, or drop the constraint"
                )


def check_weights_exist(loaded: LoadedStudy) -> None:
    """Fail before any trial starts when the recipe's weights file is missing."""
    pretrained = loaded.recipe.model.pretrained
    if pretrained is False:
        return
    from drsearch.train.named_weights import is_named

    if not is_named(pretrained) and not Path(pretrained).is_file():
        raise ConfigError(
            f"{loaded.path}: model.pretrained: weights file {pretrained} not found; download "
            "it (gated weights need a local copy), set model.pretrained: false, or try the "
            "wiring with --smoke"
        )


def sample_problems(loaded: LoadedStudy, n: int, seed: int = 0) -> list[str]:
    """Draw ``n`` configurations of the space at random (in memory, nothing stored) and
    validate each as a whole recipe; the one-line problem of each that fails."""
    import optuna

    from drsearch.config.space import sample, trial_recipe

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=seed))
    problems = []
    for i in range(n):
        trial = study.ask()
        try:
            trial_recipe(loaded.recipe, sample(trial, loaded.space, loaded.recipe), f"sample {i}")
        except ConfigError as exc:
            problems.append(str(exc))
        study.tell(trial, 0.0)
    return problems
