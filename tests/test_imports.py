"""The house rules of imports (as click's tests/test_imports.py checks its own import set).

- Imports flow downward: ``cli -> {search, inspect} -> train -> data -> config -> clinical,
  errors, fmt, io, ranking, states``; ``train`` never imports the search layer, ``search``
  and ``inspect`` never each other.
- No import circle between modules.
- Commands that need only a schedule, a table or the study records (``--help``, ``lr``,
  ``report``, ``dashboard``) do not pay for torch, timm or albumentations.
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "drsearch"
BASE = {"root", "clinical", "errors", "fmt", "io", "ranking", "states"}
ALLOWED = {
    "root": BASE,
    "clinical": BASE,
    "errors": BASE,
    "fmt": BASE,
    "io": BASE,
    "ranking": BASE,
    "states": BASE,
    "config": BASE,
    "data": BASE | {"config"},
    "train": BASE | {"config", "data"},
    "search": BASE | {"config", "data", "train"},
    "inspect": BASE | {"config", "data", "train"},
    "cli": BASE | {"config", "data", "train", "search", "inspect"},
}
HEAVY = ("torch", "timm", "albumentations")


def modules() -> dict[str, ast.Module]:
    out = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        out[name] = ast.parse(path.read_text())
    return out


def layer(module: str) -> str:
    parts = module.split(".")
    return "root" if len(parts) == 1 else parts[1]


def drsearch_imports(tree: ast.Module, top_level_only: bool) -> set[str]:
    nodes = tree.body if top_level_only else list(ast.walk(tree))
    found = set()
    for node in nodes:
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("drsearch"):
            found.add(node.module)
        elif isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("drsearch")}
    return found


def test_imports_flow_downward() -> None:
    wrong = [
        f"{name} imports {target}"
        for name, tree in modules().items()
        for target in drsearch_imports(tree, top_level_only=False)
        if layer(target) != layer(name) and layer(target) not in ALLOWED[layer(name)]
    ]
    assert not wrong, wrong


def test_no_import_circle() -> None:
    mods = modules()
    graph = {n: {t for t in drsearch_imports(tree, True) if t in mods} for n, tree in mods.items()}
    seen: dict[str, int] = {}  # 1: on the current path, 2: done

    def visit(node: str, path: list[str]) -> None:
        seen[node] = 1
        for nxt in graph[node]:
            if nxt == node or nxt.startswith(node + "."):
                continue  # a package importing its own modules (cli/__init__) is no circle
            assert seen.get(nxt) != 1, " -> ".join([*path, node, nxt])
            if nxt not in seen:
                visit(nxt, [*path, node])
        seen[node] = 2

    for name in graph:
        if name not in seen:
            visit(name, [])


def loaded_after(code: str) -> set[str]:
    script = (
        f"import sys, json\n{code}\n"
        "print(json.dumps(sorted(k for k, v in sys.modules.items() if v is not None)))"
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    return {name.split(".")[0] for name in json.loads(out.stdout.splitlines()[-1])}


def test_train_package_imports_no_search_layer() -> None:
    # timm.utils imports wandb when it is installed (the tracking extra), and wandb imports
    # click: not drsearch's doing, so measured as on a machine without wandb
    loaded = loaded_after("sys.modules['wandb'] = None\nimport drsearch.train.trainer")
    assert not loaded & {"optuna", "ray", "click", "plotly", "sqlalchemy", "mlflow", "wandb"}
    assert "torch" in loaded and "timm" in loaded


def test_light_commands_do_not_import_torch() -> None:
    loaded = loaded_after(
        "import drsearch.train, drsearch.cli, drsearch.inspect.lr, drsearch.inspect.dashboard, "
        "drsearch.inspect.report.plots, drsearch.inspect.report.records, drsearch.search.store"
    )
    assert not loaded & set(HEAVY), sorted(loaded & set(HEAVY))
