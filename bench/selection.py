"""Selection under noise, off home ground: how often the shipped winner truly meets the constraints.

    python bench/selection.py [--reps 2000] [--configs 60] [--seed 0]
                              [--population aptos ...|all] [--noise none ...|all]
                              [--top-k 3] [--folds 5] [--cap 15] [--candidates 6] [--start 1]
                              [--settle 2] [--confidence 0.95] [--workers 1|2] [--json out.json]
    python bench/selection.py --demo 0 1 2     # the demo study and its certified result, per seed

A ground-truth simulation of studies at APTOS 2019's size (3,662 images; 20% validation:
361 / 74 / 200 / 39 / 59 images of grades 0-4; the other 80% as 4 more folds for the finalist
stage), in several populations of configurations and at several levels of training noise
(``bench/selsim/populations.py``): every configuration has true confusion rows, every trained
model (the search's, each fold's) rows drawn around them, every validation count a multinomial
draw from its model's rows. Every decision is drsearch's own rule (``objective_score``,
``selection.finalists`` / ``crown``, ``racing.next_round`` / ``crowned``; the search stage's
many matrices through ``bench/selsim/scoring.py``, the same arithmetic, tested equal), on the
drawn counts only. The truth of what ships (the search trial's own model for search-only
rules; the crowned finalist's confirmation models as one ensemble for finalist rules) says
whether the winner truly meets every constraint. Rules compared at equal compute (one unit =
one training run; the search = one unit per configuration): the search alone with the
finalist stage's units as more configurations, today's fixed finalists (top 3 x 5 folds) and
the racing stage under the same cap (``bench/selsim/study.py``).

Prints one table per population: per noise level and rule, the oracle's rate, winner named,
truly feasible (of named, of all, of the studies where one exists), truly best, accuracy lost,
optimism gap and the finalist units as a share of the search's; each share with its Wilson 95%
interval over the studies. Asserts nothing. Figures and how the racing defaults were chosen:
``bench/README.md`` "Issue 33".
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from selsim.populations import LEVELS, POPULATIONS, spread  # noqa: E402
from selsim.study import Setup  # noqa: E402
from selsim.tally import run_cell, table  # noqa: E402

from drsearch.clinical import CONSTRAINT_CONFIDENCE  # noqa: E402
from drsearch.search.racing import RacePolicy  # noqa: E402


def _cell(job: tuple) -> dict:
    name, level, reps, seed, configs, top_k, folds, policy, confidence = job
    setup = Setup(POPULATIONS[name], level, configs, folds, top_k, policy, confidence)
    return run_cell(setup, reps, seed)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=2000)
    parser.add_argument("--configs", type=int, default=60)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--population", nargs="+", default=["aptos"],
                        choices=sorted(POPULATIONS) + ["all"])  # fmt: skip
    parser.add_argument("--noise", nargs="+", default=["none"], choices=list(LEVELS) + ["all"])
    parser.add_argument("--top-k", type=int, default=3, help="fixed finalists per study")
    parser.add_argument("--folds", type=int, default=5, help="cross-validation folds")
    d = RacePolicy()
    parser.add_argument("--cap", type=int, default=d.cap, help="racing: units in all")
    parser.add_argument("--candidates", type=int, default=d.candidates)
    parser.add_argument("--start", type=int, default=d.start)
    parser.add_argument("--settle", type=int, default=d.settle)
    parser.add_argument("--confidence", type=float, default=d.confidence)
    parser.add_argument("--workers", type=int, default=1, choices=(1, 2))
    parser.add_argument(
        "--objective-confidence", type=float, default=CONSTRAINT_CONFIDENCE,
        help="the study's objective.confidence (every rule's lower bounds)",
    )  # fmt: skip
    parser.add_argument("--spread", action="store_true", help="print each noise level's spread")
    parser.add_argument(
        "--tune", action="store_true", help="instead: the racing grid on the tuning populations"
    )
    parser.add_argument("--json", type=Path)
    parser.add_argument(
        "--demo", type=int, nargs="*", metavar="SEED",
        help="instead: run the demo study and evaluate its certified result with these sampler "
        "seeds (bench/selection_demo.py; ~6 min each on 2 cores)",
    )  # fmt: skip
    args = parser.parse_args()
    if args.demo:
        import tempfile

        with tempfile.TemporaryDirectory(prefix="drsearch-selection-") as tmp:
            from selection_demo import demo

            demo(args.demo, Path(tmp))
        return
    if args.tune:
        from selsim.tune import table as tune_table
        from selsim.tune import tune

        started = time.perf_counter()
        rows = tune(args.reps, args.seed, args.cap, args.workers)
        print(tune_table(rows))
        print(f"{len(rows)} policies x {args.reps} studies per tuning cell, seed {args.seed}: "
              f"{time.perf_counter() - started:.0f} s")  # fmt: skip
        if args.json:
            args.json.write_text(json.dumps(rows, indent=1))
        return
    names = list(POPULATIONS) if "all" in args.population else args.population
    levels = list(LEVELS) if "all" in args.noise else args.noise
    policy = RacePolicy(args.folds, args.cap, args.start, args.candidates, args.settle,
                        args.confidence)  # fmt: skip
    if args.spread:
        print("| population | noise | " + " | ".join(spread("aptos", "low")) + " |")
        print("|" + " --- |" * 8)
        for name in names:
            for level in levels[1:] if levels[0] == "none" else levels:
                sd = spread(name, level)
                print(f"| {name} | {level} | " + " | ".join(f"{v:.2f}" for v in sd.values()) + " |")
    jobs = [(name, level, args.reps, args.seed, args.configs, args.top_k, args.folds, policy,
             args.objective_confidence) for name in names for level in levels]  # fmt: skip
    started = time.perf_counter()
    if args.workers > 1 and len(jobs) > 1:
        import multiprocessing

        with multiprocessing.get_context("spawn").Pool(args.workers) as workers:
            cells = workers.map(_cell, jobs, chunksize=1)
    else:
        cells = [_cell(job) for job in jobs]
    for name in names:
        mine = [c for c in cells if c["population"] == name]
        pop = POPULATIONS[name]
        print(
            f"\n{name} ({pop.role}; validation {'/'.join(map(str, pop.val))}; "
            f"constraints {', '.join(f'{m}>={v:g}' for m, v in pop.constraints)}): "
            + "; ".join(
                f"{c['level']}: {c['feasible_share']:.1%} of configurations truly feasible, "
                f"{c['seconds']:.0f} s" for c in mine
            )
        )  # fmt: skip
        print(table(mine))
    print(f"\n{len(cells)} cells x {args.reps} studies, seed {args.seed}, objective confidence "
          f"{args.objective_confidence}, policy {policy.record()}: "
          f"{time.perf_counter() - started:.0f} s")  # fmt: skip
    if args.json:
        args.json.write_text(json.dumps({"args": vars(args) | {"json": str(args.json)},
                                         "cells": cells}, indent=1))  # fmt: skip


if __name__ == "__main__":
    main()
