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
