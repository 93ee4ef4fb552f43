"""``drsearch confirm``: retrain a study's finalists with fresh seeds, to rank them by their mean.

A search picks its best trial from one seed each: the winner is partly the luckiest draw. The
confirmation study retrains each of the top-k feasible configurations with S new training
seeds (``train.seed`` = the recipe's seed + 1 .. + S; the data split is unchanged), as trials
of a companion study ``<name>-confirm`` in the same storage, run by the study's executor
(Ray by default) without pruning. Each of its trials carries ``confirm_of`` (the source
trial) and ``seed``. Running it again continues it; more seeds or finalists add trials.

The summary gives per finalist the mean, standard deviation (n - 1) and range of each metric
over its seeds, ranks finalists by mean objective value, and judges the checklist's
"< 5 points of accuracy variation" on the spread across seeds (``clinical.seed_variation``).
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from drsearch.clinical import CheckItem, seed_variation
from drsearch.config.space import CategoricalParam
from drsearch.config.study import LoadedStudy, StudyConfig
from drsearch.search.database import make_storage, open_existing

#: Metrics summarised across seeds (besides the objective value).
CONFIRM_METRICS = (
    "accuracy",
    "qwk",
    "balanced_accuracy",
    "referable_auc",
    "sensitivity_severe_npdr",
    "sensitivity_pdr",
    "min_specificity",
)


def confirm_name(name: str) -> str:
    return f"{name}-confirm"


def confirmation_study(loaded: LoadedStudy, top_k: int, seeds: int) -> LoadedStudy:
    """The companion study that retrains the top ``top_k`` feasible trials with ``seeds``
    seeds each; its runs are queued in storage (idempotent: a queued or run pair is kept)."""
    from drsearch.search.export import ranked_trials

    cfg = loaded.config
    finalists = ranked_trials(loaded, top_k)
    base_seed = loaded.recipe.train.seed
    seed_list = [base_seed + i for i in range(1, seeds + 1)]
    space = dict(loaded.space)
    space["train.seed"] = CategoricalParam(type="categorical", choices=seed_list)
    config = _companion(cfg)
    study = optuna.create_study(
        study_name=config.name,
        storage=make_storage(config.storage_url()),
        direction="maximize",
        load_if_exists=True,
    )
    queued = {
        (t.user_attrs.get("confirm_of"), t.user_attrs.get("seed"))
        for t in study.get_trials(deepcopy=False)
    }
    for trial in finalists:
        for seed in seed_list:
            if (trial.number, seed) not in queued:
                study.enqueue_trial(
                    {**trial.params, "train.seed": seed},
                    user_attrs={"confirm_of": trial.number, "seed": seed},
                    skip_if_exists=False,
                )
    # the budget is every pair queued so far (an earlier, larger confirmation included)
    budget = len(study.get_trials(deepcopy=False))
    config = config.model_copy(
        update={
            "pruner": cfg.pruner.model_copy(update={"enabled": False}),
            "budget": cfg.budget.model_copy(update={"n_trials": budget}),
        }
    )
    return LoadedStudy(loaded.path, config, loaded.recipe, space)


def _companion(cfg: StudyConfig) -> StudyConfig:
    """The confirmation study's name, in the parent's storage (also when that is the
    default SQLite file, which is named after the study)."""
    return cfg.model_copy(update={"name": confirm_name(cfg.name), "storage": cfg.storage_url()})


@dataclass
class Finalist:
    """One configuration's runs over the confirmation seeds."""

    source: FrozenTrial
    runs: list[FrozenTrial]
    stats: dict[str, dict[str, float | None]]  # metric -> mean, sd, min, max, n
    variation: CheckItem

    @property
    def mean_value(self) -> float:
        return self.stats["value"]["mean"] or float("-inf")


def summarise(loaded: LoadedStudy) -> list[Finalist]:
    """Finalists of the confirmation study, best mean objective value first."""
    parent = open_existing(loaded.config, loaded.path)
    companion = open_existing(_companion(loaded.config), loaded.path)
    runs: dict[int, list[FrozenTrial]] = {}
    for t in companion.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        runs.setdefault(int(t.user_attrs["confirm_of"]), []).append(t)
    out = []
    for number, trials in runs.items():
        trials.sort(key=lambda t: t.user_attrs.get("seed", 0))
        summary = {"value": spread([t.value for t in trials])}
        for metric in CONFIRM_METRICS:
            summary[metric] = spread([t.user_attrs.get(metric) for t in trials])
        accuracies = [t.user_attrs.get("accuracy") for t in trials]
        variation = seed_variation([a for a in accuracies if a is not None])
        out.append(Finalist(parent.trials[number], trials, summary, variation))
    return sorted(out, key=lambda f: (-f.mean_value, f.source.number))


def spread(values: list[Any]) -> dict[str, float | None]:
    """Mean, sample standard deviation, min and max of the defined ``values``."""
    xs = [float(v) for v in values if v is not None]
    if not xs:
        return {"mean": None, "sd": None, "min": None, "max": None, "n": 0}
    return {
        "mean": statistics.fmean(xs),
        "sd": statistics.stdev(xs) if len(xs) > 1 else None,
        "min": min(xs),
        "max": max(xs),
        "n": len(xs),
    }
