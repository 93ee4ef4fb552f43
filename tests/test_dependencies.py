"""Every third-party module drsearch imports is a declared dependency (`pip install drsearch`
then `drsearch run` must not end in ModuleNotFoundError)."""

from __future__ import annotations

import ast
import re
import sys
from importlib.metadata import packages_distributions
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

#: Imported only inside an optional feature, and which extra declares it.
OPTIONAL = {"peft": "lora", "mlflow": "tracking", "wandb": "tracking"}


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _declared() -> tuple[set[str], dict[str, set[str]]]:
    tomllib = pytest.importorskip("tomllib")
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]

    def names(reqs: list[str]) -> set[str]:
        return {_norm(re.split(r"[\s<>=!~\[;]", r, maxsplit=1)[0]) for r in reqs}

    extras = {k: names(v) for k, v in project["optional-dependencies"].items()}
    return names(project["dependencies"]), extras


def _imported_modules() -> dict[str, list[str]]:
    """Top-level module -> the files that import it, over every module of the package."""
    found: dict[str, list[str]] = {}
    for path in sorted((ROOT / "drsearch").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                modules = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                modules = [node.module]
            else:
                continue
            for module in modules:
                top = module.split(".")[0]
                if top != "drsearch" and top not in sys.stdlib_module_names:
                    found.setdefault(top, []).append(str(path.relative_to(ROOT)))
    return found


def test_every_imported_third_party_module_is_declared() -> None:
    core, extras = _declared()
    dists = packages_distributions()
    missing = []
    for module, files in _imported_modules().items():
        owners = {_norm(d) for d in dists.get(module, [module])}
        if module in OPTIONAL:
            assert owners & extras[OPTIONAL[module]], f"{module}: not in extra {OPTIONAL[module]}"
            continue
        if not owners & core:
            missing.append(f"{module} ({', '.join(sorted(owners))}) imported by {files[0]}")
    assert not missing, "imported but not declared in [project] dependencies: " + "; ".join(missing)


def test_the_check_sees_a_module_that_is_not_declared() -> None:
    core, _ = _declared()
    assert "psutil" in {m for m in _imported_modules()}  # the liveness check uses it
    assert _norm("psutil") in core
    assert "pillow" in core  # PIL, imported by data/describe.py
