"""The demo study end to end, once per sampler seed: does the certified result hold on test?

    python bench/selection.py --demo 0 1 2        # (this module does the work)

Each seed runs ``make demo``'s study (search, finalist stage) in a fresh run root, then
``drsearch evaluate`` of it, which measures the study's certified result (the crowned
finalist's fold models as one ensemble, ``search.shipping``) once on the held-out test split.
Per seed: wall time of run and evaluate, any feasible trial below the trivial model, each
finalist's search and confirmed accuracy (with its Wilson 95% interval), the crowned
finalist, the search's own winner, both optimism gaps (search value minus confirmed value),
the certified accuracy with its interval beside the test accuracy, and whether every
certified figure held on test (at or above its certified lower bound). Asserts nothing.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

from drsearch.clinical import wilson_interval

REPO = Path(__file__).resolve().parents[1]


def demo(seeds: list[int], folder: Path) -> list[dict]:
    import optuna
    import yaml

    env = dict(os.environ, NO_ALBUMENTATIONS_UPDATE="1", RAY_AUTH_MODE="disabled")
    drsearch = str(Path(sys.executable).with_name("drsearch"))
    print(
        "| seed | run s | evaluate s | feasible below trivial | finalist: search -> confirmed "
        "accuracy (95% interval), feasible | crowned | search best | gap crowned | gap search "
        "best | certified accuracy (95%) | test accuracy | certified figures held on test |"
    )
    print("|" + " --- |" * 12)
    rows = []
    for seed in seeds:
        study = yaml.safe_load((REPO / "studies" / "demo.yaml").read_text())
        study["sampler"]["seed"] = seed
        path = folder / f"demo-{seed}.yaml"
        path.write_text(yaml.safe_dump(study))
        runs = folder / f"runs-{seed}"
        reports = folder / f"reports-{seed}"
        started = time.perf_counter()
        subprocess.run([drsearch, "run", str(path), "--run-root", str(runs), "--quiet"],
                       cwd=REPO, env=env, check=True, capture_output=True)  # fmt: skip
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
            if not e.get("complete"):
                cells.append(f"trial {e['trial']}: not confirmed")
                continue
            acc, n = e["metrics"]["accuracy"], int(e["evidence"].split()[0])
            low, high = wilson_interval(acc * n, n)
            cells.append(
                f"trial {e['trial']}: {e['search_primary']:.3f} -> {acc:.3f} "
                f"({low:.3f}-{high:.3f}), {'yes' if e['feasible'] else 'no'}"
            )
            gaps[e["trial"]] = e["optimism_gap"]
        crowned, raw = record["crowned"], record["search_best"]
        row = {"seed": seed, "run_s": wall, "crowned": crowned, "search_best": raw,
               "gap_crowned": gaps.get(crowned), "gap_search_best": gaps.get(raw)}  # fmt: skip
        eval_s, cert_cell, test_cell, held_cell = 0.0, "-", "-", "no winner: nothing evaluated"
        if crowned is not None:
            started = time.perf_counter()
            done = subprocess.run(
                [drsearch, "evaluate", str(path), "--run-root", str(runs), "--out", str(reports)],
                cwd=REPO, env=env, capture_output=True, text=True,
            )  # fmt: skip
            eval_s = time.perf_counter() - started
            if done.returncode != 0:
                held_cell = f"evaluate exit {done.returncode}: {done.stderr.strip()[-200:]}"
            else:
                ev = json.loads(
                    (reports / f"evaluation-finalist{crowned}-{record['plan']['mode']}.json")
                    .read_text()
                )  # fmt: skip
                cert = ev["certificate"]
                low, high = cert["accuracy_interval"]
                cert_cell = f"{cert['metrics']['accuracy']:.3f} ({low:.3f}-{high:.3f})"
                test = ev["test"]["metrics"]["accuracy"]
                where = "inside" if low <= test <= high else "above" if test > high else "BELOW"
                test_cell = f"{test:.3f} ({where})"
                held = cert["held"]
                below_rows = [r["figure"] for r in held if not r["held"]]
                held_cell = f"{sum(r['held'] for r in held)} of {len(held)}" + (
                    f" (below: {', '.join(below_rows)})" if below_rows else ""
                )
                row |= {"certified_accuracy": cert["metrics"]["accuracy"],
                        "certified_interval": [low, high], "test_accuracy": test,
                        "accuracy_inside": low <= test <= high, "held": held}  # fmt: skip
        row["evaluate_s"] = eval_s
        rows.append(row)
        gap = f"{gaps[crowned]:+.3f}" if crowned in gaps else "-"
        gap_raw = f"{gaps[raw]:+.3f}" if raw in gaps else "-"
        print(
            f"| {seed} | {wall:.0f} | {eval_s:.0f} | {below} | {'; '.join(cells)} | {crowned} | "
            f"{raw} | {gap} | {gap_raw} | {cert_cell} | {test_cell} | {held_cell} |",
            flush=True,
        )
    return rows
