"""Many studies per (population, training noise): each rule's shares with Wilson 95% intervals.

Per rule: the oracle's rate (a truly feasible configuration exists among those it chose from),
a winner named, truly feasible of those named, truly feasible of all studies and of the
studies where one exists, the truly best configuration crowned, accuracy lost against it, the
optimism gap (reported minus the shipped artefact's true accuracy) and the finalist stage's
units as a share of the search's.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np

from drsearch.clinical import wilson_interval

from .populations import LEVELS, POPULATIONS, Population
from .scoring import truth
from .study import RULES, Draws, Outcome, Setup, study


def study_rng(seed: int, population: str, level: str, i: int) -> np.random.Generator:
    """Study ``i``'s draws: a stream of its own, the same for every rule and run."""
    return np.random.default_rng([seed, list(POPULATIONS).index(population),
                                  list(LEVELS).index(level), i])  # fmt: skip


def new_tally() -> dict[str, Any]:
    return {"oracle": 0, "named": 0, "feasible": 0, "feasible_oracle": 0, "best": 0,
            "gap": [], "lost": [], "units": []}  # fmt: skip


def count(tally: dict[str, Any], o: Outcome, d: Draws, pop: Population) -> None:
    """Add one study's outcome of a rule to its tally, judged on what ships."""
    pool_ok = np.flatnonzero(d.feasible[: o.pool])
    best = int(pool_ok[np.argmax(d.accuracy[pool_ok])]) if len(pool_ok) else None
    tally["oracle"] += best is not None
    tally["units"].append(o.units)
    if o.winner is None:
        return
    tally["named"] += 1
    true_acc, true_ok = truth(o.shipped, pop.counts, pop.constraints)
    true_acc, true_ok = float(true_acc), bool(true_ok)
    tally["feasible"] += true_ok
    tally["feasible_oracle"] += true_ok and best is not None
    tally["best"] += o.winner == best
    tally["gap"].append(o.reported - true_acc)
    if true_ok and best is not None:
        tally["lost"].append(float(d.accuracy[best]) - true_acc)


def run_cell(setup: Setup, reps: int, seed: int) -> dict[str, Any]:
    """``reps`` studies of one (population, level): counts per rule (see ``summarise``)."""
    started = time.perf_counter()
    pop = setup.population
    tallies = {r: new_tally() for r in RULES}
    feasible_share, rounds = [], []
    for i in range(reps):
        outcomes, d, r = study(study_rng(seed, pop.name, setup.level, i), setup)
        feasible_share.append(d.feasible[: setup.configs].mean())
        rounds.append(r)
        for rule, o in outcomes.items():
            count(tallies[rule], o, d, pop)
    return {
        "population": pop.name,
        "role": pop.role,
        "level": setup.level,
        "reps": reps,
        "seed": seed,
        "configs": setup.configs,
        "extra": setup.extra,
        "policy": setup.policy.record(),
        "feasible_share": float(np.mean(feasible_share)),
        "rounds_mean": float(np.mean(rounds)),
        "seconds": time.perf_counter() - started,
        "rules": {r: summarise(t, reps, setup.configs) for r, t in tallies.items()},
    }


def summarise(t: dict[str, Any], reps: int, configs: int) -> dict[str, Any]:
    return {
        "oracle": t["oracle"],
        "named": t["named"],
        "feasible": t["feasible"],
        "feasible_oracle": t["feasible_oracle"],
        "best": t["best"],
        "gap": float(np.mean(t["gap"])) if t["gap"] else None,
        "lost": float(np.mean(t["lost"])) if t["lost"] else None,
        "units": float(np.mean(t["units"])),
        "units_max": int(np.max(t["units"])),
        "share_of_search": float(np.mean(t["units"])) / configs,
        "reps": reps,
    }


def share(k: int, n: int) -> str:
    if n == 0:
        return "-"
    low, high = wilson_interval(k, n) or (0.0, 1.0)
    return f"{k / n:.3f} ({low:.3f}-{high:.3f})"


HEADER = (
    "noise",
    "rule",
    "oracle",
    "named",
    "truly feasible, of named",
    "truly feasible, all",
    "truly feasible, where one exists",
    "truly best",
    "accuracy lost",
    "optimism gap",
    "finalist units (share of search)",
)


def table(cells: list[dict[str, Any]]) -> str:
    """One Markdown table of the cells (one population, its noise levels), rule by rule."""
    lines = ["| " + " | ".join(HEADER) + " |", "|" + " --- |" * len(HEADER)]
    for c in cells:
        for rule, r in c["rules"].items():
            n = r["reps"]
            search = c["configs"] + (c["extra"] if "equal compute" in rule else 0)
            units = (
                f"{r['units']:.1f} ({r['share_of_search']:.0%})"
                if r["units"]
                else f"0 (search {search})"
            )
            lost = "-" if r["lost"] is None else f"{r['lost']:.4f}"
            gap = "-" if r["gap"] is None else f"{r['gap']:+.4f}"
            bold = "**" if rule == "lower bound + racing" else ""
            lines.append(
                f"| {c['level']} | {bold}{rule}{bold} | {share(r['oracle'], n)} | "
                f"{share(r['named'], n)} | {share(r['feasible'], r['named'])} | "
                f"{share(r['feasible'], n)} | {share(r['feasible_oracle'], r['oracle'])} | "
                f"{share(r['best'], n)} | {lost} | {gap} | {units} |"
            )
    return "\n".join(lines)
