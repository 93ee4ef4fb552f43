"""YAHPO Gym's LCBench surrogate, queried with onnxruntime directly.

``yahpo-gym`` 1.0.2 pins ``numpy<2`` (through ConfigSpace 0.6), which this project's stack
(OpenCV 5, numpy 2) cannot share an environment with. Its query is small: the ONNX model of
``../shared/benchmarks/yahpo/lcbench`` takes the task as one integer (``encoding.json``) and
the eight continuous inputs in ``cont_names`` order, and returns the six ``y_names``. This
module does exactly that (``yahpo_gym.BenchmarkSet._config_to_xs`` and ``objective_function``,
1.0.2) and is checked against yahpo-gym itself: ``python bench/lcbench.py --check REF.json``
compares with reference values written by ``--write-reference`` in an environment that has
yahpo-gym (numpy<2): one query equals yahpo-gym's exactly; the 52-epoch batch the benchmark
uses differs by at most 4.5e-4 relative (onnxruntime's batched products sum in another order).

The search space is LCBench's (``config_space.json``): batch_size 16-512 (log, int),
learning_rate 1e-4-0.1 (log), momentum 0.1-0.99, weight_decay 1e-5-0.1, num_layers 1-5
(int), max_units 64-1024 (log, int), max_dropout 0-1; epochs 1..52.
"""

from __future__ import annotations

import argparse
import json
import os
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np

DATA = Path(os.environ.get("DRSEARCH_YAHPO", Path(__file__).resolve().parents[2] / "shared"
                           / "benchmarks" / "yahpo")) / "lcbench"  # fmt: skip
CONT_NAMES = (
    "epoch", "batch_size", "learning_rate", "momentum", "weight_decay", "num_layers",
    "max_units", "max_dropout",
)  # fmt: skip
Y_NAMES = (
    "time", "val_accuracy", "val_cross_entropy", "val_balanced_accuracy", "test_cross_entropy",
    "test_balanced_accuracy",
)  # fmt: skip
EPOCHS = 52
#: (low, high, log, integer) of each hyperparameter (config_space.json)
SPACE = {
    "batch_size": (16, 512, True, True),
    "learning_rate": (1e-4, 0.1, True, False),
    "momentum": (0.1, 0.99, False, False),
    "weight_decay": (1e-5, 0.1, False, False),
    "num_layers": (1, 5, False, True),
    "max_units": (64, 1024, True, True),
    "max_dropout": (0.0, 1.0, False, False),
}


class LCBench:
    """The surrogate for one OpenML task: every epoch's figures of a configuration."""

    def __init__(self, task: str, data: Path = DATA) -> None:
        encoding = json.loads((data / "encoding.json").read_text())["OpenML_task_id"]
        if task not in encoding or task == "#na#":
            raise ValueError(f"unknown LCBench task {task!r}")
        self.task, self.data, self.code = task, data, int(encoding[task])

    @cached_property
    def session(self) -> Any:
        import onnxruntime as rt

        options = rt.SessionOptions()
        options.intra_op_num_threads = 1  # benchmarks run their own processes in parallel
        return rt.InferenceSession(str(self.data / "model.onnx"), options)

    def curves(self, configs: list[dict[str, float]]) -> dict[str, np.ndarray]:
        """For each config, every ``Y_NAMES`` figure at epochs 1..52: arrays N x 52."""
        n = len(configs)
        x_cont = np.empty((n * EPOCHS, len(CONT_NAMES)), dtype=np.float32)
        for i, config in enumerate(configs):
            rows = slice(i * EPOCHS, (i + 1) * EPOCHS)
            x_cont[rows, 0] = np.arange(1, EPOCHS + 1)
            for j, name in enumerate(CONT_NAMES[1:], start=1):
                x_cont[rows, j] = config[name]
        x_cat = np.full((n * EPOCHS, 1), self.code, dtype=np.int32)
        out = self.session.run(None, {"x_cat": x_cat, "x_cont": x_cont})[0]
        return {name: out[:, k].reshape(n, EPOCHS).astype(np.float64)
                for k, name in enumerate(Y_NAMES)}  # fmt: skip

    def query(self, config: dict[str, float], epoch: int) -> dict[str, float]:
        """One configuration at one epoch (as yahpo-gym's ``objective_function``)."""
        x_cont = np.array([[epoch, *(config[n] for n in CONT_NAMES[1:])]], dtype=np.float32)
        x_cat = np.array([[self.code]], dtype=np.int32)
        out = self.session.run(None, {"x_cat": x_cat, "x_cont": x_cont})[0][0]
        return {name: float(v) for name, v in zip(Y_NAMES, out, strict=True)}


def tasks(data: Path = DATA) -> list[str]:
    """The 34 tasks, as config_space.json lists them."""
    space = json.loads((data / "config_space.json").read_text())
    (task,) = [h for h in space["hyperparameters"] if h["name"] == "OpenML_task_id"]
    return list(task["choices"])


def random_config(rng: np.random.Generator) -> dict[str, Any]:
    """A configuration drawn uniformly (log-uniformly where the space is log)."""
    out: dict[str, Any] = {}
    for name, (low, high, log, integer) in SPACE.items():
        value = float(np.exp(rng.uniform(np.log(low), np.log(high))) if log else
                      rng.uniform(low, high))  # fmt: skip
        out[name] = int(round(value)) if integer else value
    return out


def _write_reference(path: Path, n: int) -> None:
    """In an environment with yahpo-gym: its values for ``n`` random configurations on three
    tasks at three epochs."""
    from yahpo_gym import benchmark_set, local_config

    local_config.init_config()
    local_config.set_data_path(str(DATA.parent))
    bench = benchmark_set.BenchmarkSet("lcbench")
    rng = np.random.default_rng(0)
    rows = []
    for task in ("3945", "167168", "189909"):
        bench.set_instance(task)
        for _ in range(n):
            config = random_config(rng)
            for epoch in (1, 17, 52):
                query = dict(config, epoch=epoch, OpenML_task_id=task)
                rows.append({"task": task, "config": config, "epoch": epoch,
                             "y": {k: float(v) for k, v in
                                   bench.objective_function(query)[0].items()}})  # fmt: skip
    path.write_text(json.dumps(rows, indent=1))


def _check(path: Path) -> tuple[float, float]:
    """The largest difference from yahpo-gym's reference values: of one query (absolute), and
    of the 52-epoch batch (relative: onnxruntime's batched matrix products sum in another
    order)."""
    single = batch = 0.0
    for row in json.loads(path.read_text()):
        bench = LCBench(row["task"])
        got = bench.query(row["config"], row["epoch"])
        curve = bench.curves([row["config"]])
        for name in Y_NAMES:
            want = row["y"][name]
            single = max(single, abs(got[name] - want))
            batch = max(batch, abs(curve[name][0, row["epoch"] - 1] - want) / max(1, abs(want)))
    return single, batch


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--write-reference", type=Path)
    parser.add_argument("--check", type=Path)
    parser.add_argument("--n", type=int, default=20)
    args = parser.parse_args()
    if args.write_reference:
        _write_reference(args.write_reference, args.n)
    if args.check:
        single, batch = _check(args.check)
        print(f"largest difference from yahpo-gym: {single:.2e} (one query), {batch:.2e} "
              "relative (52-epoch batch)")  # fmt: skip
        raise SystemExit(0 if single < 1e-6 and batch < 1e-3 else 1)
