"""Beyond one machine, on one machine: Ray's multi-node test cluster runs a study's trials."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from tests.conftest import write_tiny_study

pytestmark = pytest.mark.e2e

SCRIPT = textwrap.dedent("""
    import json, sys
    from pathlib import Path
    from drsearch.search.runners.ray import ray_env
    ray_env()
    from ray.cluster_utils import Cluster
    from drsearch.search.runners import run_study
    from drsearch.config.study import load_study

    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1})
    cluster.add_node(num_cpus=1)
    cluster.wait_for_nodes()
    try:
        summary = run_study(load_study(Path(sys.argv[1])), ray_address=cluster.address)
        import optuna
        study = optuna.load_study(study_name="tiny", storage=sys.argv[2])
        print(json.dumps([[t.state.name, t.user_attrs.get("ray_node_id")] for t in study.trials]))
    finally:
        import ray
        ray.shutdown()
        cluster.shutdown()
""")


def test_study_runs_across_two_ray_nodes(tmp_path: Path, tiny_dataset: Path) -> None:
    path = write_tiny_study(
        tmp_path,
        tiny_dataset,
        "optim.lr: {type: float, low: 1.0e-4, high: 1.0e-2, log: true}\n",
        executor="ray",
        budget={"n_trials": 2},
        pruner={"enabled": False},
        resources={"cpus_per_trial": 1, "max_concurrent": 2},
        ray={"reuse_actors": False},
        recipe_overrides={"train.epochs": 2},
    )
    storage = f"sqlite:///{(tmp_path / 'runs' / 'tiny.db').resolve()}"
    out = subprocess.run(
        [sys.executable, "-c", SCRIPT, str(path), storage],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    rows = json.loads(out.stdout.strip().splitlines()[-1])
    assert [state for state, _ in rows] == ["COMPLETE"] * 2
    nodes = {node for _, node in rows}
    assert len(nodes) == 2, nodes  # one CPU per node: concurrent trials need both nodes
