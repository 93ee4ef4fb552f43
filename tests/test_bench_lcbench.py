"""bench/hpo_lcbench.py's bookkeeping: runs of the same (task, seed, W) merged method by method."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
hpo_lcbench = pytest.importorskip("hpo_lcbench")


def _result(task: str, seed: int, workers: int, methods: list[str], budget: float = 10.0) -> dict:
    runs = {m: {"times": [1.0], "values": [0.5], "returned_test": 0.5} for m in methods}
    return {"task": task, "seed": hash((task, seed)), "seed_index": seed, "workers": workers,
            "budget": budget, "runs": runs}  # fmt: skip


def test_merged_runs_keep_whole_seeds_with_every_method() -> None:
    first = [_result(t, s, 1, ["a", "b"]) for t in ("t1", "t2") for s in (1, 2)]
    # a later run adds method c for seed 1 on both tasks, seed 2 on t1 only
    second = [_result("t1", 1, 1, ["c"]), _result("t2", 1, 1, ["c"]), _result("t1", 2, 1, ["c"])]
    merged = hpo_lcbench.merge([first, second], ("a", "b", "c"))
    assert sorted((r["task"], r["seed_index"]) for r in merged) == [("t1", 1), ("t2", 1)]
    assert all(list(r["runs"]) == ["a", "b", "c"] for r in merged)
    # methods not asked for are left out of the result (they would change the ranks' scale)
    assert all(list(r["runs"]) == ["a"] for r in hpo_lcbench.merge([first, second], ("a",)))
    assert len(hpo_lcbench.merge([first, second], ("a",))) == 4
    with pytest.raises(SystemExit, match="different budgets"):
        hpo_lcbench.merge([first, [_result("t1", 1, 1, ["c"], budget=20.0)]], ("a", "c"))


def _traced(task: str, seed: int, runs: dict[str, list[tuple[float, float]]]) -> dict:
    reference = {"best_val": 1.0, "median_val": 0.0, "best_test": 1.0, "median_test": 0.0}
    return {
        "task": task, "seed": seed, "seed_index": seed, "workers": 1, "budget": 10.0,
        "reference": reference,
        "runs": {m: {"times": [t for t, _ in trace], "values": [v for _, v in trace],
                     "returned_test": trace[-1][1]} for m, trace in runs.items()},
    }  # fmt: skip


def test_ranks_gaps_and_the_page_match_a_hand_worked_example(tmp_path: Path) -> None:
    # a: 0.9 at t=1; b: 0.5 at t=1, 0.95 at t=6; c: 0.5 at t=1. Regret = 1 - incumbent.
    # At 10% (t=1): a 0.1, b 0.5, c 0.5 -> ranks 1, 2.5, 2.5. At 100%: b 1, a 2, c 3.
    runs = {"a": [(1.0, 0.9)], "b": [(1.0, 0.5), (6.0, 0.95)], "c": [(1.0, 0.5)]}
    results = [_traced(task, 0, runs) for task in ("t1", "t2")]
    summary = hpo_lcbench.figures(results, ("a", "b", "c"), default="a")["W=1"]
    assert [summary["rank"][m]["0.1"] for m in "abc"] == [1.0, 2.5, 2.5]
    assert [summary["rank"][m]["1.0"] for m in "abc"] == [2.0, 1.0, 3.0]
    assert summary["rank_gap_to_default"]["b"]["1.0"]["mean"] == -1.0  # b ranks better
    assert summary["rank_gap_to_default"]["c"]["0.1"]["mean"] == 1.5
    assert summary["regret"]["b"]["1.0"]["median"] == pytest.approx(0.05)
    page = tmp_path / "page.html"
    hpo_lcbench.curves_page(results, ("a", "b", "c"), page, {"W=1": summary}, "a")
    text = page.read_text()
    assert "<td><b>1.00 [1.00, 1.00]</b></td>" in text  # a at 10%, b at 100%: bold, best
    assert "<td>-1.00 [-1.00, -1.00]</td>" in text  # b's paired gap to a at 100%
    table = hpo_lcbench.markdown_ranks({"W=1": summary}, ("a", "b", "c")).splitlines()
    assert table[2:] == [
        "| b | 2.50 / 2.50 / 2.50 / **1.00** |",
        "| a | **1.00** / **1.00** / **1.00** / 2.00 |",
        "| c | 2.50 / 2.50 / 2.50 / 3.00 |",
    ]


def test_a_log_resumed_with_other_methods_keeps_both_runs(tmp_path: Path) -> None:
    import json

    log = tmp_path / "run.partial.jsonl"
    lines = []
    for methods, seeds in ((["a", "b"], (1, 2)), (["c"], (1,))):
        for seed in seeds:
            for task in ("t1", "t2"):
                result = _result(task, seed, 1, methods)
                del result["seed_index"]  # the log's key holds it
                lines.append({"key": [task, seed, 1], "full_runs": 30, "methods": methods,
                              "result": result})  # fmt: skip
    cut = _result("t1", 2, 1, ["c"])  # c on seed 2: one task of two, then cut off
    del cut["seed_index"]
    lines.append({"key": ["t1", 2, 1], "full_runs": 30, "methods": ["c"], "result": cut})
    log.write_text("\n".join(json.dumps(x) for x in lines))
    loaded = hpo_lcbench._load(log)
    assert loaded["args"]["methods"] == ["a", "b", "c"]
    merged = hpo_lcbench.merge([loaded["results"]], ("a", "b", "c"))
    assert sorted((r["task"], r["seed_index"]) for r in merged) == [("t1", 1), ("t2", 1)]
    assert len(hpo_lcbench.merge([loaded["results"]], ("a", "b"))) == 4
    # a default that changed: the runs under today's names, a swap done at once
    swapped = hpo_lcbench.renamed(loaded, {"a": "b", "b": "a", "c": "d"})
    assert swapped["args"]["methods"] == ["b", "a", "d"]
    first = next(r for r in swapped["results"] if r["runs"].keys() == {"a", "b"})
    source = next(r for r in loaded["results"] if r["runs"].keys() == {"a", "b"})
    assert first["runs"]["b"] is source["runs"]["a"] and first["runs"]["a"] is source["runs"]["b"]
    assert hpo_lcbench.renamed(loaded, {}) is loaded
    with pytest.raises(SystemExit, match="b is already a method of the file"):
        hpo_lcbench.renamed(loaded, {"a": "b"})  # b's runs would be lost


def test_the_parallel_speed_up_by_hand() -> None:
    """W=1 ends at 0.8 (reached at t=8); W=4 reaches 0.8 at t=2 (4x) on t1, ends at 0.7 on t2
    (never: 0, and its final regret 0.1 worse). Regret scale: best 1.0, median 0.0."""
    one = {"t1": [(8.0, 0.8)], "t2": [(8.0, 0.8)]}
    four = {"t1": [(2.0, 0.8)], "t2": [(1.0, 0.7)]}
    results = [_traced(t, 0, {"a": one[t]}) for t in one]
    results += [_traced(t, 0, {"a": four[t]}) | {"workers": 4} for t in four]
    speed = hpo_lcbench.parallel_speedup(results, ("a",))
    assert speed["workers"] == 4
    assert sorted([speed["a"]["q25"], speed["a"]["q75"]]) == [0.0, 4.0]
    assert speed["a"]["never"] == 0.5
    assert speed["a"]["final_regret_gap"] in (pytest.approx(0.0), pytest.approx(0.1))
    assert speed["a"]["final_regret_gap_ci"][1] == pytest.approx(0.1)
