"""Selection under noise: how often the crowned winner truly meets the constraints.

    python bench/selection.py [--reps 2000] [--configs 60] [--seed 0] [--population aptos]
                              [--top-k 3] [--folds 5] [--json out.json]
    python bench/selection.py --demo 0 1 2     # the demo study, one run per sampler seed

A ground-truth simulation of a study at APTOS 2019's size (3,662 images; 20% validation:
361 / 74 / 200 / 39 / 59 images of grades 0-4; the other 80% as 4 more folds for the finalist
stage). Each configuration of a search has a *true* confusion distribution (rows: P(called k |
grade g)); its validation confusion matrix is drawn from it (multinomial per grade), and
every rule decides with drsearch's own code (``clinical.objective_score``,
``search.selection``) on the drawn counts only, with the study's default constraints. The
truth (the configuration's expected metrics) then says whether the crowned winner really
meets every constraint, whether it is the truly best feasible configuration, and how
optimistic its figure was.

A configuration's true rows come from an ordinal latent model: an image of grade g gets a
score g + noise (normal, sd ``sigma``) and is called the grade its score falls in, with the
cuts at 0.5..3.5 shifted by a calling bias and per-cut jitter; a share of grade-3 and grade-4
images (``miss``) is "hard" and called 0 or 1 instead (the missed severe cases that matter).
Populations (``--population``): ``aptos`` (sigma 0.35-0.75, miss 0-15%: accuracies ~0.72-0.88
as APTOS models reach) and ``hard`` (miss 0-25%, bias sd 0.25: most configurations near or
past a boundary).

Rules, each on the same draws:
- ``point (today)``: constraints met on the point estimate; the winner is the best feasible
  search value (the rule drsearch shipped with, minus its cliff, which does not change the
  winner);
- ``lower bound``: constraints met on the 90% one-sided Wilson lower bound;
- ``point + finalists`` and ``lower bound + finalists`` (the default): the top 3 by search
  value are confirmed on 5-fold pooled out-of-fold counts (the search's own fold counted as it
  was drawn: its selection bias is kept, not washed out; 4 fresh folds), and the best feasible
  confirmed value is crowned.
Seeds are not simulated (a configuration's truth is fixed; seed noise would only add to the
search's optimism). One draw per configuration: choosing the best of several epochs on the
same images makes a real search more optimistic than this.

Prints, per rule: truly feasible winners (share of studies that named one, and of all
studies), the truly best configuration crowned, no winner named, the optimism gap (the
figure the rule reports for its winner minus the winner's true accuracy) and the true
accuracy lost against the truly best feasible configuration; each share with its Wilson 95%
interval over the repetitions. Asserts nothing.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy.stats import norm

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from drsearch.clinical import DEFAULT_CONSTRAINTS, objective_score, wilson_interval  # noqa: E402
from drsearch.search.selection import Ranked, crown, finalists, search_best  # noqa: E402

#: APTOS 2019's grade counts (3,662 images) and its 20% validation split.
APTOS = np.array([1805, 370, 999, 193, 295])
VAL = np.round(APTOS * 0.2).astype(int)  # 361, 74, 200, 39, 59
FOLDS = 5
TOP_K = 3
CONSTRAINTS = [(c.metric, c.min) for c in DEFAULT_CONSTRAINTS]

POPULATIONS = {
    "aptos": {"sigma": (0.35, 0.75), "bias_sd": 0.15, "jitter_sd": 0.10, "miss": (0.0, 0.15)},
    "hard": {"sigma": (0.35, 0.75), "bias_sd": 0.25, "jitter_sd": 0.15, "miss": (0.0, 0.25)},
}


def true_rows(rng: np.random.Generator, n: int, population: str) -> np.ndarray:
    """``n`` configurations' true confusion distributions (n x 5 x 5, rows sum to 1)."""
    p = POPULATIONS[population]
    sigma = rng.uniform(*p["sigma"], size=n)
    bias = rng.normal(0.0, p["bias_sd"], size=n)
    cuts = np.array([0.5, 1.5, 2.5, 3.5])[None, :] + bias[:, None]
    cuts = np.sort(cuts + rng.normal(0.0, p["jitter_sd"], size=(n, 4)), axis=1)
    edges = np.concatenate([np.full((n, 1), -np.inf), cuts, np.full((n, 1), np.inf)], axis=1)
    grades = np.arange(5)[None, :, None]
    cdf = norm.cdf((edges[:, None, :] - grades) / sigma[:, None, None])  # n x 5 x 6
    rows = np.diff(cdf, axis=2)
    miss = rng.uniform(*p["miss"], size=(n, 2))
    for k, g in enumerate((3, 4)):
        hard = miss[:, k][:, None]
        rows[:, g, :] *= 1 - hard
        rows[:, g, 0] += hard[:, 0] / 2
        rows[:, g, 1] += hard[:, 0] / 2
    return rows / rows.sum(axis=2, keepdims=True)


def draw(rng: np.random.Generator, rows: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """Confusion matrices drawn from ``rows`` with ``counts`` images per grade."""
    out = np.empty(rows.shape, dtype=np.int64)
    for g in range(5):
        out[:, g, :] = rng.multinomial(counts[g], rows[:, g, :])
    return out


def expected(rows: np.ndarray, counts: np.ndarray) -> np.ndarray:
    return rows * counts[None, :, None]


@dataclass
class Truth:
    accuracy: np.ndarray  # per configuration, at APTOS's proportions
    feasible: np.ndarray  # meets every constraint and beats the trivial model, in truth


def truth(rows: np.ndarray) -> Truth:
    exp = expected(rows, APTOS)
    acc, feasible = np.empty(len(rows)), np.empty(len(rows), dtype=bool)
    for i, cm in enumerate(exp):
        s = objective_score("accuracy", CONSTRAINTS, metrics(cm), "point")
        acc[i], feasible[i] = s.primary, s.feasible
    return Truth(acc, feasible)


def metrics(cm: np.ndarray) -> dict:
    return {"accuracy": float(np.trace(cm) / cm.sum()), "confusion_matrix": cm.tolist()}


@dataclass
class Outcome:
    winner: int | None
    reported: float | None  # the figure the rule reports for its winner


def run_rules(
    rng: np.random.Generator, rows: np.ndarray, top_k: int = TOP_K, folds: int = FOLDS
) -> dict[str, Outcome]:
    search_cm = draw(rng, rows, VAL)
    fresh = draw(rng, rows, VAL * (folds - 1))
    pooled = search_cm + fresh
    out = {}
    for rule in ("point", "lower_bound"):
        scored = [objective_score("accuracy", CONSTRAINTS, metrics(cm), rule) for cm in search_cm]
        ranked = [Ranked(i, s.value, s.feasible) for i, s in enumerate(scored)]
        best = search_best(ranked)
        label = "point (today)" if rule == "point" else "lower bound"
        out[label] = Outcome(best and best.number, best and scored[best.number].primary)
        confirmed = []
        for f in finalists(ranked, top_k):
            s = objective_score("accuracy", CONSTRAINTS, metrics(pooled[f.number]), rule)
            confirmed.append(Ranked(f.number, s.value, s.feasible))
        won = crown(confirmed)
        label = ("point" if rule == "point" else "lower bound") + " + finalists"
        value = None if won is None else next(c.value for c in confirmed if c is won)
        out[label] = Outcome(won and won.number, value)
    return out


def demo(seeds: list[int], folder: Path) -> None:
    """The demo study (``make demo``'s search and finalist stage) once per sampler seed, each in
    a fresh run root: no feasible trial below the trivial model; each finalist's search and
    confirmed accuracy with the confirmed Wilson 95% interval; the optimism gap (search value
    minus confirmed value) of the crowned finalist against the search's own winner."""
    import os
    import subprocess

    import optuna
    import yaml

    repo = Path(__file__).resolve().parents[1]
    env = dict(os.environ, NO_ALBUMENTATIONS_UPDATE="1", RAY_AUTH_MODE="disabled")
    drsearch = str(Path(sys.executable).with_name("drsearch"))
    print(
        "| seed | wall s | feasible below trivial | finalist: search -> confirmed accuracy "
        "(95% interval), feasible | crowned | search best | gap crowned | gap search best |"
    )
    print("|" + " --- |" * 8)
    for seed in seeds:
        study = yaml.safe_load((repo / "studies" / "demo.yaml").read_text())
        study["sampler"]["seed"] = seed
        path = folder / f"demo-{seed}.yaml"
        path.write_text(yaml.safe_dump(study))
        runs = folder / f"runs-{seed}"
        started = time.perf_counter()
        subprocess.run([drsearch, "run", str(path), "--run-root", str(runs), "--quiet"],
                       cwd=repo, env=env, check=True, capture_output=True)  # fmt: skip
        wall = time.perf_counter() - started
        s = optuna.load_study(study_name="demo", storage=f"sqlite:///{runs / 'demo.db'}")
        trials = [t for t in s.trials if t.state.name == "COMPLETE"]
        below = sum(
            1 for t in trials
            if t.user_attrs.get("feasible")
            and t.user_attrs["objective_primary"] <= t.user_attrs["trivial_value"]
        )  # fmt: skip
        record = s.user_attrs["drsearch:finalists"]
        cells, gaps = [], {}
        for e in record["finalists"]:
            acc = e["metrics"]["accuracy"]
            n = int(e["evidence"].split()[0])
            low, high = wilson_interval(acc * n, n)
            cells.append(
                f"trial {e['trial']}: {e['search_primary']:.3f} -> {acc:.3f} "
                f"({low:.3f}-{high:.3f}), {'yes' if e['feasible'] else 'no'}"
            )
            gaps[e["trial"]] = e["optimism_gap"]
        crowned, raw = record["crowned"], record["search_best"]
        print(
            f"| {seed} | {wall:.0f} | {below} | {'; '.join(cells)} | {crowned} | {raw} | "
            f"{gaps.get(crowned, float('nan')):+.3f} | {gaps.get(raw, float('nan')):+.3f} |"
        )


def share(k: int, n: int) -> str:
    if n == 0:
        return "-"
    low, high = wilson_interval(k, n)
    return f"{k / n:.3f} ({low:.3f}-{high:.3f})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=2000)
    parser.add_argument("--configs", type=int, default=60)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--population", choices=sorted(POPULATIONS), default="aptos")
    parser.add_argument("--top-k", type=int, default=TOP_K, help="finalists per study")
    parser.add_argument("--folds", type=int, default=FOLDS, help="cross-validation folds")
    parser.add_argument("--json", type=Path)
    parser.add_argument(
        "--demo", type=int, nargs="*", metavar="SEED",
        help="instead: run the demo study with these sampler seeds (~5 min each on 2 cores)",
    )  # fmt: skip
    args = parser.parse_args()
    if args.demo:
        import tempfile

        with tempfile.TemporaryDirectory(prefix="drsearch-selection-") as tmp:
            demo(args.demo, Path(tmp))
        return
    rng = np.random.default_rng(args.seed)
    started = time.perf_counter()
    tallies: dict[str, dict[str, list]] = {}
    pop_feasible, studies_with_feasible = [], 0
    for _ in range(args.reps):
        rows = true_rows(rng, args.configs, args.population)
        t = truth(rows)
        pop_feasible.append(t.feasible.mean())
        best_true = np.flatnonzero(t.feasible)
        best = int(best_true[np.argmax(t.accuracy[best_true])]) if len(best_true) else None
        studies_with_feasible += best is not None
        for rule, o in run_rules(rng, rows, args.top_k, args.folds).items():
            tally = tallies.setdefault(rule, {"named": [], "feasible": [], "best": [],
                                              "gap": [], "lost": []})  # fmt: skip
            named = o.winner is not None
            tally["named"].append(named)
            if named:
                w = o.winner
                tally["feasible"].append(bool(t.feasible[w]))
                tally["best"].append(w == best)
                tally["gap"].append(o.reported - t.accuracy[w])
                if best is not None and t.feasible[w]:
                    tally["lost"].append(t.accuracy[best] - t.accuracy[w])
    n = args.reps
    print(
        f"{n} studies of {args.configs} configurations, population {args.population!r}: "
        f"{np.mean(pop_feasible):.1%} of configurations truly feasible on average; "
        f"{studies_with_feasible}/{n} studies have a truly feasible one; "
        f"{time.perf_counter() - started:.0f} s"
    )
    header = (
        "rule",
        "winner named",
        "truly feasible, of those named",
        "truly feasible, all studies",
        "truly best",
        "optimism gap (mean)",
        "accuracy lost | truly feasible (mean)",
    )
    print("| " + " | ".join(header) + " |")
    print("|" + " --- |" * len(header))
    record = {}
    for rule, tally in tallies.items():
        named = sum(tally["named"])
        feasible = sum(tally["feasible"])
        record[rule] = {
            "named": named / n,
            "truly_feasible_given_named": feasible / named if named else None,
            "truly_feasible_all": feasible / n,
            "truly_best": sum(tally["best"]) / n,
            "optimism_gap": float(np.mean(tally["gap"])) if tally["gap"] else None,
            "accuracy_lost": float(np.mean(tally["lost"])) if tally["lost"] else None,
        }
        gap = f"{np.mean(tally['gap']):+.4f}" if tally["gap"] else "-"
        lost = f"{np.mean(tally['lost']):.4f}" if tally["lost"] else "-"
        print(
            f"| {rule} | {share(named, n)} | {share(feasible, named)} | {share(feasible, n)} | "
            f"{share(sum(tally['best']), n)} | {gap} | {lost} |"
        )
    if args.json:
        args.json.write_text(json.dumps({"args": vars(args) | {"json": str(args.json)},
                                         "rules": record}, indent=1))  # fmt: skip


if __name__ == "__main__":
    main()
