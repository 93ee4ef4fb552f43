"""One simulated study under every rule, on the same draws.

Each study draws ``configs + extra`` configurations from a population and ``folds`` trained
models of each (``populations.train``): model 0 is the search's (trained on folds 1..K-1 and
validated on fold 0, the search's validation split), model k validates on fold k; each fold
holds the population's validation counts (20% of the data). A finalist retrained on fold 0 is
the search's own model again (same seed, same data: its counts are the search's, selection bias
kept). One unit = one training run; the search spends one unit per configuration.

Rules (``RULES``), and what ships (its truth decides "truly feasible"):

- ``point`` / ``lower bound`` on the search alone (the first ``configs``, or all
  ``configs + extra`` at the finalist stage's compute): the search trial's own model;
- ``lower bound + fixed``: today's stage, the top ``top_k`` by search value on every fold,
  crowned on pooled counts (``selection.finalists`` / ``crown``, ``objective_score``);
- ``lower bound + racing``: ``racing.next_round`` round by round under its cap, folds 1..K-1
  first and the search's fold 0 last; crowned by ``racing.crowned``;
- ``every config x every fold``: a reference of what the data can certify (K x the search's
  compute), not a candidate rule.

A finalist rule ships its crowned finalist's confirmation models as one ensemble; its truth is
taken as the mean of those models' rows (the ensemble's expected confusion rows approximated
by the average member's: an ensemble of averaged probabilities usually does at least as well,
so this understates it).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from drsearch.clinical import CONSTRAINT_CONFIDENCE, objective_score
from drsearch.ranking import Ranked, search_best
from drsearch.search import racing
from drsearch.search.selection import crown, finalists

from .populations import LEVELS, Population, train
from .scoring import objective, truth

#: Trained models drawn per configuration to estimate its truth (its expected model).
TRUTH_DRAWS = 32

RULES = (
    "point",
    "point, equal compute",
    "lower bound",
    "lower bound, equal compute",
    "lower bound + fixed finalists",
    "lower bound + racing",
    "every config x every fold",
)


@dataclass(frozen=True)
class Setup:
    population: Population
    level: str
    configs: int = 60
    folds: int = 5
    top_k: int = 3
    policy: racing.RacePolicy = field(default_factory=racing.RacePolicy)
    confidence: float = CONSTRAINT_CONFIDENCE  # the study's objective.confidence

    @property
    def extra(self) -> int:
        """Search configurations the equal-compute rules add: the finalist stages' compute."""
        return max(self.top_k * self.folds, self.policy.cap)


@dataclass
class Outcome:
    pool: int  # configurations the rule chose among
    units: int  # finalist-stage units spent (0 for search-only rules)
    winner: int | None = None
    reported: float | None = None  # the figure the rule reports for its winner
    shipped: np.ndarray | None = None  # the shipped artefact's rows


def _metrics(cm: np.ndarray) -> dict[str, Any]:
    return {"accuracy": float(np.trace(cm) / cm.sum()), "confusion_matrix": cm.tolist()}


@dataclass
class Draws:
    """One study's draws and the truth: configuration rows, trained models (n, K, 5, 5), their
    fold counts, the search's ranking on the lower-bound objective, each configuration's true
    accuracy and feasibility, and the finalist scores seen so far (shared by every policy)."""

    rows: np.ndarray
    models: np.ndarray
    counts: np.ndarray
    ranked: list[Ranked]
    accuracy: np.ndarray
    feasible: np.ndarray
    scores: dict[tuple[int, int], Any] = field(default_factory=dict)


def draw(rng: np.random.Generator, setup: Setup) -> Draws:
    pop, k, n = setup.population, setup.folds, setup.configs
    rows = pop.draw(rng, n + setup.extra)
    level = LEVELS[setup.level]
    models = train(rng, rows, level, k)  # (total, k, 5, 5)
    counts = rng.multinomial(pop.val, models)  # each model on its own fold
    value, _, feasible = objective(counts[:n, 0], pop.constraints, "lower_bound", setup.confidence)
    ranked = [Ranked(i, float(value[i]), bool(feasible[i])) for i in range(n)]
    # a configuration's truth: its expected trained model (the mean rows of TRUTH_DRAWS more
    # models; training noise is not mean-preserving: a calling shift either way costs accuracy)
    expected = rows if setup.level == "none" else train(rng, rows, level, TRUTH_DRAWS).mean(1)
    acc, ok = truth(expected, pop.counts, pop.constraints)
    return Draws(rows, models, counts, ranked, acc, ok)


def study(rng: np.random.Generator, setup: Setup) -> tuple[dict[str, Outcome], Draws, int]:
    """Every rule's outcome in one study, its draws and the racing stage's rounds."""
    d = draw(rng, setup)
    out = search_rules(d, setup)
    out["lower bound + fixed finalists"] = fixed(d, setup)
    out["lower bound + racing"], rounds = race(d, setup, setup.policy)
    out["every config x every fold"] = every(d, setup)
    return out, d, rounds


def search_rules(d: Draws, setup: Setup) -> dict[str, Outcome]:
    """The search alone, on its first ``configs`` and on all (equal compute): its own model."""
    n, total = setup.configs, len(d.rows)
    out = {}
    for rule, label in (("point", "point"), ("lower_bound", "lower bound")):
        cons = setup.population.constraints
        value, primary, feasible = objective(d.counts[:, 0], cons, rule, setup.confidence)
        for pool, name in ((n, label), (total, label + ", equal compute")):
            best = search_best([Ranked(i, float(value[i]), bool(feasible[i])) for i in range(pool)])
            o = out[name] = Outcome(pool, 0)
            if best is not None:
                w = best.number
                o.winner, o.reported, o.shipped = w, float(primary[w]), d.models[w, 0]
    return out


def _score(d: Draws, setup: Setup, number: int, units: int, folds: list[int]):  # noqa: ANN202
    """The project's objective on a finalist's pooled counts over ``folds`` (cached)."""
    key = (number, units) if folds[0] != 0 else (number, -units)
    if key not in d.scores:
        metrics = _metrics(d.counts[number, folds].sum(axis=0))
        cons = list(setup.population.constraints)
        s = objective_score("accuracy", cons, metrics, "lower_bound", setup.confidence)
        d.scores[key] = (metrics, s)
    return d.scores[key]


def fixed(d: Draws, setup: Setup) -> Outcome:
    """Today's stage: the top k by search value on every fold, pooled, crowned."""
    o = Outcome(setup.configs, setup.top_k * setup.folds)
    folds = list(range(setup.folds))
    confirmed, scores = [], {}
    for f in finalists(d.ranked, setup.top_k):
        scores[f.number] = s = _score(d, setup, f.number, setup.folds, folds)[1]
        confirmed.append(Ranked(f.number, s.value, s.feasible))
    won = crown(confirmed)
    if won is not None:
        o.winner, o.reported = won.number, scores[won.number].primary
        o.shipped = d.models[won.number].mean(axis=0)
    return o


def every(d: Draws, setup: Setup) -> Outcome:
    """The reference: every configuration on every fold (K x the search's compute)."""
    n = setup.configs
    cons = setup.population.constraints
    value, primary, feasible = objective(d.counts[:n].sum(axis=1), cons, "lower_bound",
                                         setup.confidence)  # fmt: skip
    o = Outcome(n, n * setup.folds)
    best = search_best([Ranked(i, float(value[i]), bool(feasible[i])) for i in range(n)])
    if best is not None:
        w = best.number
        o.winner, o.reported, o.shipped = w, float(primary[w]), d.models[w].mean(axis=0)
    return o


def race(d: Draws, setup: Setup, policy: racing.RacePolicy) -> tuple[Outcome, int]:
    """The racing stage on the study's draws: folds 1..K-1 first, the search's fold 0 last."""
    order = list(range(1, setup.folds)) + [0]
    arms = {r.number: racing.Arm(r.number, r.value) for r in racing.entrants(d.ranked, policy)}
    scores = {}  # id of a metrics dict -> its score

    def score(metrics: dict[str, Any]):  # noqa: ANN202
        return scores[id(metrics)]

    rounds = 0
    while True:
        step = racing.next_round(list(arms.values()), policy, score)
        if step.done:
            break
        rounds += 1
        for number, more in step.more().items():
            units = arms[number].units + more
            metrics, s = _score(d, setup, number, units, order[:units])
            scores[id(metrics)] = s
            arms[number] = racing.Arm(number, arms[number].search_value, units, metrics)
    o = Outcome(setup.configs, sum(a.units for a in arms.values()))
    won = racing.crowned(list(arms.values()), score)
    if won is not None:
        a = arms[won.number]
        o.winner, o.reported = won.number, score(a.metrics).primary  # type: ignore[arg-type]
        o.shipped = d.models[won.number, order[: a.units]].mean(axis=0)
    return o, rounds
