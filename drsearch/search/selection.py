"""Selection: which trials become finalists, how they are confirmed, and which one a study
crowns.

A search ranks its trials on one validation split, so its maximum is optimistic (the winner's
curse: of many noisy figures, the luckiest wins) and a constraint met on a handful of rare
images may be luck. The finalist stage answers both:

1. ``finalists``: the top ``k`` complete trials by search value, which is the smooth objective
   (primary minus standard errors of shortfall): a trial that misses a constraint by a
   fraction of a standard error can still be a finalist, and more evidence may certify it.
2. Each finalist is retrained as trials of a companion study ``<name>-confirm`` in the same
   storage: on every cross-validation fold (``folds``; the metrics are computed on the pooled
   out-of-fold predictions, so every non-test image is validation once: K times the search's
   rare-grade counts) or with fresh seeds (``seeds``; the metrics of the average seed). Every
   run is scored at the epoch its search trial chose (``train.select_epoch``), not at an epoch
   chosen again on the images it is scored on.
3. ``crown``: the study's best is the best *feasible* confirmed finalist (the objective's
   own rule, on the confirmation's counts); when none is, no winner is named.

The record (``FINALISTS_ATTR``, a study user attribute, and ``reports/<name>/confirm.json``)
keeps, per finalist, its search value, confirmed value, the optimism gap between them, its runs
and any failed run with its reason. ``bench/selection.py`` measures these rules against the
search's raw maximum on a ground-truth simulation.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import optuna
from optuna.trial import FrozenTrial, TrialState

from drsearch.config.space import IntParam
from drsearch.config.study import FinalistConfig, LoadedStudy, StudyConfig
from drsearch.errors import ConfigError
from drsearch.ranking import Ranked, by_value, closest, ranked_trials, search_best
from drsearch.search.racing import REASONS, RacePolicy

#: The study user attribute that holds the finalist stage's record.
FINALISTS_ATTR = "drsearch:finalists"
#: Metrics summarised across seeds (besides the objective value).
SEED_METRICS = (
    "accuracy",
    "qwk",
    "balanced_accuracy",
    "referable_auc",
    "referable_sensitivity",
    "referable_specificity",
    "referred_severe_npdr",
    "referred_pdr",
    "vtdr_specificity",
)


# -- the rules ----------------------------------------------------------------------------------
def finalists(trials: Sequence[Ranked], k: int) -> list[Ranked]:
    """The ``k`` best trials by value (the smooth objective, feasible or not), best first;
    ties go to the earlier trial."""
    return by_value(trials)[:k]


def crown(confirmed: Sequence[Ranked]) -> Ranked | None:
    """The best feasible confirmed finalist; ``None`` when none is feasible."""
    return search_best(confirmed)


def complete_trials(study: optuna.Study) -> list[FrozenTrial]:
    return [
        t
        for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
        if t.value is not None
    ]


def search_best_trial(study: optuna.Study) -> FrozenTrial | None:
    """The search's own winner (``ranking.search_best``) as a trial; ``None`` when none is
    feasible (``study_best`` follows the finalist stage once it has run)."""
    best = search_best(ranked_trials(study.get_trials(deepcopy=False)))
    return None if best is None else study.trials[best.number]


def closest_infeasible(study: optuna.Study) -> FrozenTrial | None:
    """When no trial is feasible: the complete one of highest value (the earlier of equals),
    to show what came closest; never a winner."""
    top = closest(ranked_trials(study.get_trials(deepcopy=False)))
    return None if top is None else study.trials[top.number]


def finalist_trials(study: optuna.Study, k: int) -> list[FrozenTrial]:
    """The study's ``k`` finalists (``finalists`` on its complete trials), best first."""
    by_number = {t.number: t for t in complete_trials(study)}
    return [by_number[r.number] for r in finalists(ranked_trials(by_number.values()), k)]


# -- the plan and the companion study -----------------------------------------------------------
@dataclass(frozen=True)
class Plan:
    """How the finalists are confirmed: ``top_k`` of them, on ``n`` folds or seeds; with
    ``race``, the ``top_k`` candidates are raced (``search/race_stage.py``) on up to ``n``
    each, under the policy's cap."""

    top_k: int
    mode: Literal["folds", "seeds"]
    n: int
    race: RacePolicy | None = None

    @property
    def label(self) -> str:
        if self.race is not None:
            return (f"race of the top {self.top_k} on up to {self.n} {self.mode}, cap "
                    f"{self.race.cap} runs")  # fmt: skip
        return f"top {self.top_k} x {self.n} {self.mode}"

    def record(self) -> dict[str, Any]:
        out: dict[str, Any] = {"top_k": self.top_k, "mode": self.mode, "n": self.n}
        if self.race is not None:
            out["race"] = self.race.record()
        return out


def plan_of(
    loaded: LoadedStudy,
    top_k: int | None = None,
    seeds: int | None = None,
    folds: int | None = None,
) -> Plan:
    """The study's finalist plan, with command-line overrides; without either, 3 x 3 seeds."""
    if seeds is not None and folds is not None:
        raise ConfigError("--seeds and --folds: give one of them")
    stage = loaded.config.finalists or FinalistConfig(seeds=3)
    k = top_k or stage.top_k
    if folds is None and seeds is None:
        folds, seeds = stage.folds, stage.seeds
    if folds is not None:
        cv = loaded.recipe.data.cv_folds
        if cv != folds:
            raise ConfigError(
                f"{loaded.path}: --folds {folds}: the search validated on "
                + (f"fold 0 of data.cv_folds: {cv}" if cv else "a split without folds")
                + "; finalists are retrained on those folds only: set finalists: {folds: K} "
                "(or data.cv_folds) in the study before running it, or confirm with --seeds"
            )
        return _raced(stage, Plan(k, "folds", folds), top_k)
    return _raced(stage, Plan(k, "seeds", int(seeds or 3)), top_k)


def _raced(stage: FinalistConfig, plan: Plan, top_k: int | None) -> Plan:
    """``plan`` as a race when the study asks for one: ``candidates`` enter (default: the
    policy's 5, at least ``top_k``), up to ``cap`` runs (default ``top_k`` x n: the fixed
    stage's compute)."""
    if not stage.race:
        return plan
    defaults = RacePolicy()
    candidates = stage.candidates or max(defaults.candidates, top_k or stage.top_k)
    cap = stage.cap or plan.top_k * plan.n
    policy = RacePolicy(max_units=plan.n, cap=cap, candidates=candidates)
    return Plan(candidates, plan.mode, plan.n, policy)


def confirm_name(name: str) -> str:
    return f"{name}-confirm"


def parent_name(name: str) -> str:
    """The study a confirmation study (``confirm_name``) confirms."""
    return name.removesuffix("-confirm")


def companion_config(cfg: StudyConfig) -> StudyConfig:
    """The confirmation study's config: its name, in the parent's storage (also when that is
    the default SQLite file, which is named after the study), never pruned."""
    return cfg.model_copy(
        update={
            "name": confirm_name(cfg.name),
            "storage": cfg.storage_url(),
            "pruner": cfg.pruner.model_copy(update={"enabled": False}),
        }
    )


def _run_key(t: FrozenTrial) -> tuple[Any, ...]:
    a = t.user_attrs
    return (a.get("confirm_of"), a.get("fold"), a.get("seed"), a.get("select_epoch"))


def _runs_wanted(plan: Plan, loaded: LoadedStudy, trial: FrozenTrial) -> list[dict[str, Any]]:
    """The confirmation runs of one finalist: its parameters plus a fold or a seed, scored
    at its search trial's best epoch."""
    epoch = int(trial.user_attrs.get("best_epoch") or loaded.recipe.train.epochs)
    base = {"confirm_of": trial.number, "select_epoch": epoch}
    if plan.mode == "folds":
        return [base | {"fold": k, "seed": None} for k in range(plan.n)]
    seed0 = loaded.recipe.train.seed
    return [base | {"fold": None, "seed": seed0 + i} for i in range(1, plan.n + 1)]


def complete_runs(runs: Sequence[FrozenTrial]) -> list[FrozenTrial]:
    """The complete ones of a finalist's ``runs``, one per fold or seed (the latest of a key
    run twice), in the order their keys first completed."""
    done = sorted((t for t in runs if t.state == TrialState.COMPLETE), key=lambda t: t.number)
    return list({_run_key(t): t for t in done}.values())


def _key(run: dict[str, Any]) -> tuple[Any, ...]:
    return (run["confirm_of"], run["fold"], run["seed"], run["select_epoch"])


def confirmation_study(loaded: LoadedStudy, plan: Plan, retry_failed: bool = False) -> LoadedStudy:
    """The companion study that confirms the parent's current finalists. Under the study lock
    (several runners queue each run once), every run a finalist lacks is queued: never run,
    interrupted (Ctrl-C, a killed runner) or, with ``retry_failed``, failed (the re-run
    replaces it: ``retry_of``). The budget is what counts plus what waits, so a claim always
    takes a queued run and nothing is sampled."""
    from drsearch.search.database import open_existing
    from drsearch.search.store import RETRY_OF, StudyStore, count_trials, retried_numbers

    parent = open_existing(loaded.config, loaded.path)
    chosen = finalist_trials(parent, plan.top_k)
    if not chosen:
        raise ConfigError(
            f"{loaded.path}: study {loaded.config.name!r} has no complete trial to confirm yet"
        )
    config = companion_config(loaded.config)
    store = StudyStore(config, queue_only=True)
    wanted = (
        []
        if plan.race is not None  # decided under the lock, on the runs as they stand
        else [(t, run) for t in chosen for run in _runs_wanted(plan, loaded, t)]
    )
    try:
        with store.lock.hold():
            store.reap_locked()  # runs of runners that are gone are interrupted, not running
            store.requeue_locked()  # and queued again with their own finalist and fold/seed
            trials = store.study.get_trials(deepcopy=False)
            replaced = retried_numbers(trials)
            stands: dict[tuple[Any, ...], FrozenTrial] = {}  # the run that stands for each key
            for t in trials:
                # a failed run stands (recorded with its reason) unless it is retried; so does
                # one interrupted too often in a row (requeue_locked leaves it)
                failed = t.state == TrialState.FAIL and retry_failed
                if not failed and t.number not in replaced:
                    stands.setdefault(_run_key(t), t)
            if plan.race is not None:
                from drsearch.search.race_stage import to_queue

                wanted = to_queue(plan, loaded, chosen, trials, stands)
            for trial, run in wanted:
                if _key(run) in stands:
                    continue
                params = dict(trial.params) | {"train.select_epoch": run["select_epoch"]}
                params |= {"data.cv_fold": run["fold"]} if plan.mode == "folds" else {}
                params |= {"train.seed": run["seed"]} if plan.mode == "seeds" else {}
                attrs = {k: v for k, v in run.items() if v is not None}
                before = [t for t in trials if _run_key(t) == _key(run)]
                if before:
                    attrs[RETRY_OF] = before[-1].number  # the failed run no longer counts
                store.study.enqueue_trial(params, user_attrs=attrs, skip_if_exists=False)
                stands[_key(run)] = trial
            trials = store.study.get_trials(deepcopy=False)
            waiting = sum(1 for t in trials if t.state == TrialState.WAITING)
            budget = count_trials(trials).claimed + waiting
    finally:
        store.close()
    # fixed distributions (a choice list that grows with new finalists or seeds would change
    # a distribution Optuna already recorded): every queued value lies inside them; a recipe
    # of one epoch has one (Optuna takes low == high, the space files' own check does not)
    space = dict(loaded.space)
    epochs = loaded.recipe.train.epochs
    space["train.select_epoch"] = IntParam.model_construct(type="int", low=1, high=epochs)
    if plan.mode == "folds":
        space["data.cv_fold"] = IntParam(type="int", low=0, high=plan.n - 1)
    else:
        space["train.seed"] = IntParam(type="int", low=0, high=2**32 - 1)
    config = config.model_copy(
        update={"budget": config.budget.model_copy(update={"n_trials": max(budget, 1)})}
    )
    return LoadedStudy(
        loaded.path, config, loaded.recipe, space, smoke=loaded.smoke, companion=True
    )


# -- confirmed scores ---------------------------------------------------------------------------
def confirm_record(loaded: LoadedStudy, plan: Plan) -> dict[str, Any]:
    """Score each current finalist on its confirmation runs and crown the best feasible one;
    the record is stored with the study (``FINALISTS_ATTR``) and returned."""
    from drsearch.search.database import open_existing
    from drsearch.search.trial import judgement_record

    parent = open_existing(loaded.config, loaded.path)
    companion = open_existing(companion_config(loaded.config), loaded.path)
    runs = companion.get_trials(deepcopy=False)
    entries, confirmed = [], []
    chosen = finalist_trials(parent, plan.top_k)
    race = None
    if plan.race is not None:  # the race as it stands: done when a round queues nothing
        from drsearch.search.race_stage import current_round, race_open

        race = current_round(plan, loaded, chosen, runs)
        race_done = race.done and not race_open(runs)
        decisions = {d.number: d for d in race.decisions}
    for trial in chosen:
        wanted = _runs_wanted(plan, loaded, trial)
        keys = {_key(w) for w in wanted}
        mine = [t for t in runs if _run_key(t) in keys]
        done_keys = {_run_key(t) for t in mine if t.state == TrialState.COMPLETE}
        done = complete_runs(mine)
        failed = [
            {"run": t.number, "fold": t.user_attrs.get("fold"), "seed": t.user_attrs.get("seed"),
             "reason": t.user_attrs.get("fail_reason") or t.state.name}
            for t in mine
            if t.state in (TrialState.FAIL, TrialState.PRUNED) and _run_key(t) not in done_keys
        ]  # fmt: skip
        entry: dict[str, Any] = {
            "trial": trial.number,
            "params": trial.params,
            "search_value": trial.value,
            "search_primary": trial.user_attrs.get("objective_primary"),
            "search_feasible": bool(trial.user_attrs.get("feasible")),
            "select_epoch": wanted[0]["select_epoch"],
            "runs": sorted(t.number for t in done),
            # each run on its own: a mean of 0.80 and -0.19 reads only beside these
            "run_values": [t.value for t in sorted(done, key=lambda t: t.number)],
            "feasible_runs": sum(bool(t.user_attrs.get("feasible")) for t in done),
            "failed_runs": failed,
            "complete": len(done) == len(wanted),
        }
        if race is not None:  # a raced candidate stands on the units it ran, once it is done
            d = decisions[trial.number]
            entry["complete"] = bool(done) and race_done
            entry["race"] = {"units": d.units, "state": d.state, "reason": d.reason,
                             "why": REASONS.get(d.reason or "", ""), "note": d.note}  # fmt: skip
        if entry["complete"]:
            try:
                metrics, evidence, unseen = _confirmed_metrics(plan, done)
            except ConfigError as exc:  # a run folder lost: this finalist, not the record
                entry |= {"complete": False, "error": str(exc)}
                entries.append(entry)
                continue
            s = loaded.config.objective.score(metrics)
            entry |= {
                "confirmed_value": s.value,
                "confirmed_primary": s.primary,
                "feasible": s.feasible,
                "infeasible_reasons": s.reasons,
                "judgements": [judgement_record(j) for j in s.judgements],
                "trivial_value": s.trivial,
                "optimism_gap": float(trial.value) - s.value,
                "primary_gap": None
                if entry["search_primary"] is None
                else entry["search_primary"] - s.primary,
                "evidence": evidence,
                # images behind each proportion's denominator: pooled (folds) or per seed
                "n_images": int(round(float(np.sum(metrics["confusion_matrix"])))),
                "metrics": {k: metrics.get(k) for k in SEED_METRICS},
            }
            if unseen is not None:  # the folds the search never validated on
                u = loaded.config.objective.score(unseen[0])
                entry["unseen_folds"] = {
                    "value": u.value, "primary": u.primary, "feasible": u.feasible,
                    "evidence": unseen[1],
                }  # fmt: skip
            if plan.mode == "seeds":
                entry["seed_spread"] = {"value": spread([t.value for t in done])} | {
                    k: spread([t.user_attrs.get(k) for t in done]) for k in SEED_METRICS
                }
            confirmed.append(Ranked(trial.number, s.value, s.feasible))
        entries.append(entry)
    won = crown(confirmed)
    pending = [e["trial"] for e in entries if not e["complete"]]
    if race is not None:  # pending: the race is not over (its open candidates)
        pending = [] if race_done else [d.number for d in race.decisions if d.reason != "outside"]
        won = won if race_done else None
    record = {
        "plan": plan.record(),
        **({"race": race.record()} if race is not None else {}),
        "rule": (
            "a race of the top-k complete trials by search value (search/racing.py): each "
            "enters with one " + plan.mode[:-1] + ", more go where the evidence is open, up to "
            "the cap; a candidate closes once certainly feasible and leading, certainly "
            "infeasible, certainly beaten or out of units; scored on its pooled runs at its "
            "search trial's best epoch; crowned: the best feasible confirmed value"
            if plan.race is not None
            else "finalists: the top-k complete trials by search value (the smooth objective); "
            + (
                "each retrained on every fold, scored on the pooled out-of-fold predictions"
                if plan.mode == "folds"
                else "each retrained with fresh seeds, scored on the average seed's counts"
            )
            + ", at its search trial's best epoch; crowned: the best feasible confirmed value"
        ),  # fmt: skip
        "constraints_on": loaded.config.objective.constraints_on,
        "confidence": loaded.config.objective.confidence,
        "objective": loaded.config.objective.model_dump(mode="json"),
        "finalists": entries,
        "crowned": None if won is None else won.number,
        "pending": pending,
        "search_best": _number(search_best(ranked_trials(complete_trials(parent)))),
        "complete_trials_then": len(complete_trials(parent)),
        "at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    parent.set_user_attr(FINALISTS_ATTR, record)
    from drsearch.search.annotations import annotate_study

    annotate_study(parent, loaded, record)  # the dashboard's study note names the winner
    return record


def _number(r: Ranked | None) -> int | None:
    return None if r is None else r.number


def _confirmed_metrics(
    plan: Plan, done: list[FrozenTrial]
) -> tuple[dict[str, Any], str, tuple[dict[str, Any], str] | None]:
    """The metrics a finalist is confirmed on, what they rest on, and (folds) the metrics of
    the folds the search never validated on (fold 0 is the search's own: the trial and its
    epoch were chosen on it, so 1/K of the pooled images carry that choice)."""
    from drsearch.train.metrics import compute_metrics
    from drsearch.train.outputs import RunFolder

    if plan.mode == "folds":
        ids, labels, preds, probs, folds = [], [], [], [], []
        for t in sorted(done, key=lambda t: t.user_attrs.get("fold", 0)):
            folder = RunFolder(Path(str(t.user_attrs.get("run_dir", ""))))
            try:
                i, y, p, q = folder.read_predictions()
            except (OSError, ValueError) as exc:
                raise ConfigError(
                    f"confirmation run {t.number}: its predictions.csv cannot be read ({exc}); "
                    "its run folder is needed to pool the folds"
                ) from None
            ids += i
            labels.append(y)
            preds.append(p)
            probs.append(q)
            folds.append(np.full(len(y), int(t.user_attrs.get("fold", 0))))
        if len(set(ids)) != len(ids):
            raise ConfigError("the folds' validation images overlap: the folds were not a "
                              "partition (data changed between runs?)")  # fmt: skip
        y, p, q = np.concatenate(labels), np.concatenate(preds), np.concatenate(probs)
        fold = np.concatenate(folds)
        metrics = compute_metrics(y, q, p)
        rest = fold != 0
        unseen = (
            compute_metrics(y[rest], q[rest], p[rest]),
            f"{int(rest.sum())} images of folds 1-{plan.n - 1}",
        )
        folds_run = f"{len(done)} fold" + ("s" if len(done) != 1 else "")
        return metrics, f"{len(y)} pooled out-of-fold images ({folds_run})", unseen
    # seeds: the average seed (its confusion matrix is the mean of theirs)
    cms = [np.asarray(t.user_attrs["confusion_matrix"], dtype=float) for t in done]
    metrics = {
        k: _mean([t.user_attrs.get(k) for t in done])
        for k in ("accuracy", "qwk", "balanced_accuracy", "macro_f1", "referable_auc")
    }
    metrics["confusion_matrix"] = np.mean(cms, axis=0).tolist()
    from drsearch.clinical import PROPORTIONS, metric_value

    for name in PROPORTIONS:
        metrics.setdefault(name, metric_value(name, metrics["confusion_matrix"]))
    n = int(round(float(np.sum(cms[0]))))
    return metrics, f"the mean of {len(done)} seeds on the same {n} validation images", None


def _mean(values: list[Any]) -> float | None:
    xs = [float(v) for v in values if v is not None]
    return statistics.fmean(xs) if xs else None


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
