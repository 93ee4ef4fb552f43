"""The trainer must not pull in the search layer (as click's tests/test_imports.py checks)."""

from __future__ import annotations

import json
import subprocess
import sys

FORBIDDEN = ("optuna", "ray", "click", "plotly", "sqlalchemy")


def test_train_package_imports_no_search_layer() -> None:
    code = "import sys, json, drsearch.train; print(json.dumps(sorted(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    loaded = {name.split(".")[0] for name in json.loads(out.stdout)}
    assert not loaded & set(FORBIDDEN), sorted(loaded & set(FORBIDDEN))
    assert "torch" in loaded and "timm" in loaded
