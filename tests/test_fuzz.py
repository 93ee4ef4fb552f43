"""Fuzzing the files users write: recipes, studies and search spaces, broken every way.

Each generated file (wrong types, out-of-range and non-finite numbers, unicode, unknown and
duplicate keys, deep nesting, YAML tags, bytes that are not UTF-8, cut-off text) goes through
the command that reads it (``drsearch lr`` for a recipe, ``drsearch check`` for a study and
its search space). Whatever the input: exit code 0 or 2, never a traceback, no code run from
the file, and no file written anywhere.

CI runs a fixed, bounded set (deterministic); by hand, ``DRSEARCH_FUZZ=long pytest
tests/test_fuzz.py -s`` runs many more and prints how many files were tried.
"""

from __future__ import annotations

import os
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
import yaml
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from drsearch.cli import cli
from drsearch.config import Recipe
from drsearch.config.study import StudyConfig
from drsearch.io import flatten
from tests.conftest import tiny_recipe_dict

settings.register_profile(
    "ci",
    max_examples=70,
    derandomize=True,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
settings.register_profile(
    "long",
    max_examples=int(os.environ.get("DRSEARCH_FUZZ_EXAMPLES", "2000")),
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
PROFILE = "long" if os.environ.get("DRSEARCH_FUZZ") == "long" else "ci"
TRIED: Counter[str] = Counter()

RECIPE_KEYS = sorted(flatten(Recipe().model_dump(mode="json")))
STUDY_KEYS = sorted(
    flatten(
        StudyConfig(name="x", recipe=Path("r.yaml"), search_space=Path("s.yaml")).model_dump(
            mode="json"
        )
    )
)
SECTIONS = sorted({k.split(".")[0] for k in RECIPE_KEYS + STUDY_KEYS})
SPACE_FIELDS = ["type", "low", "high", "log", "step", "choices", "when"]

WEIRD = st.sampled_from(
    ["1e-5", "1e30", "-0", ".inf", ".nan", "cosine", "focal", "qkv", "..", "/", "~", "a/../../b",
     "ｅｆｆｉｃｉｅｎｔ", "\u202e", "", " ", "null", "0x1F", "1_000", "-1e309", "True"]
)  # fmt: skip
SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(10**40), max_value=10**40),
    st.integers(min_value=-3, max_value=300),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=24),
    WEIRD,
)
VALUES = st.recursive(
    SCALARS,
    lambda kids: st.one_of(
        st.lists(kids, max_size=5), st.dictionaries(st.text(max_size=8), kids, max_size=4)
    ),
    max_leaves=12,
)


def _set(doc: dict[str, Any], dotted: str, value: Any) -> None:
    node: Any = doc
    parts = dotted.split(".")
    for part in parts[:-1]:
        if not isinstance(node, dict):
            return
        node = node.setdefault(part, {})
    if isinstance(node, dict):
        node[parts[-1]] = value


def _delete(doc: dict[str, Any], dotted: str) -> None:
    node: Any = doc
    parts = dotted.split(".")
    for part in parts[:-1]:
        node = node.get(part) if isinstance(node, dict) else None
    if isinstance(node, dict):
        node.pop(parts[-1], None)


@st.composite
def mutated(draw: st.DrawFn, base: dict[str, Any], keys: list[str]) -> dict[str, Any]:
    doc = yaml.safe_load(yaml.safe_dump(base))
    for _ in range(draw(st.sampled_from([0, 1, 1, 1, 1, 2, 2, 3, 6]))):  # mostly one change
        how = draw(st.sampled_from(["set", "set", "set", "delete", "unknown", "section"]))
        if how == "set":
            _set(doc, draw(st.sampled_from(keys)), draw(VALUES))
        elif how == "delete":
            _delete(doc, draw(st.sampled_from(keys)))
        elif how == "unknown":
            _set(doc, f"{draw(st.sampled_from(SECTIONS))}.{draw(st.text(max_size=8))}", 1)
        else:
            doc[draw(st.sampled_from(SECTIONS))] = draw(VALUES)
    return doc


@st.composite
def rendered(draw: st.DrawFn, doc: Any, marker: str) -> bytes:
    """The document as file bytes, perhaps damaged the ways files get damaged."""
    try:
        text = yaml.safe_dump(doc, allow_unicode=draw(st.booleans()), sort_keys=False)
    except (yaml.YAMLError, RecursionError):
        text = "{}"
    damage = draw(
        st.sampled_from(["none"] * 6 + ["duplicate", "tag", "latin1", "deep", "cut", "tabs"])
    )
    if damage == "duplicate" and text.strip():
        first = text.splitlines()[0]
        text = f"{first}\n{text}"
    elif damage == "tag":
        text += f"\nevil: !!python/object/apply:os.system ['touch {marker}']\n"
    elif damage == "latin1":
        return text.encode("utf-8") + "\n# caf\u00e9\n".encode("latin-1")
    elif damage == "deep":
        n = draw(st.integers(40, 4000))
        text += f"\ndeep: {'[' * n}{']' * n}\n"
    elif damage == "cut":
        text = text[: draw(st.integers(0, max(0, len(text) - 1)))]
    elif damage == "tabs":
        text = text.replace("  ", "\t")
    return text.encode("utf-8")


def run_cli(args: list[str], workdir: Path, marker: Path) -> None:
    """One invocation: exit 0 or 2, no traceback, nothing run from the file or written."""
    before = sorted(p.name for p in workdir.iterdir())
    result = CliRunner().invoke(cli, args)
    if result.exit_code not in (0, 2) or "Traceback" in result.output:
        raise AssertionError(
            f"{args}: exit {result.exit_code}\n{result.output}"
        ) from result.exception
    assert not marker.exists(), "a YAML tag ran a command"
    assert sorted(p.name for p in workdir.iterdir()) == before, "a file was written"
    TRIED[f"{args[0]} exit {result.exit_code}"] += 1


@pytest.fixture
def workdir(tmp_path: Path, tiny_dataset: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A project folder: a tiny dataset on disk and an empty run root, as the cwd."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "data").symlink_to(tiny_dataset)
    return tmp_path


RECIPE = tiny_recipe_dict(Path("data"))
SPACE = {
    "optim.lr": {"type": "float", "low": 1e-4, "high": 1e-2, "log": True},
    "loss.name": {"type": "categorical", "choices": ["ce", "focal"]},
    "loss.gamma": {"type": "float", "low": 0.5, "high": 4, "when": {"loss.name": "focal"}},
    "schedule.warmup_epochs": {"type": "float", "low": 0, "high": 2, "step": 0.5},
    "train.batch_size": {"type": "categorical", "choices": [16, 32]},
}
SPACE_KEYS = [f"{k}.{f}" for k in SPACE for f in SPACE_FIELDS] + RECIPE_KEYS
STUDY = {
    "name": "fuzz",
    "recipe": "recipe.yaml",
    "search_space": "space.yaml",
    "budget": {"n_trials": 3},
    "executor": "local",
    "run_root": "runs",
}


@settings(settings.get_profile(PROFILE))
@given(data=st.data())
def test_fuzzed_recipes(workdir: Path, data: st.DataObject) -> None:
    marker = workdir / "pwned"
    body = data.draw(rendered(data.draw(mutated(RECIPE, RECIPE_KEYS)), str(marker)))
    (workdir / "recipe.yaml").write_bytes(body)
    run_cli(["lr", "recipe.yaml", "--steps-per-epoch", "3"], workdir, marker)


@settings(settings.get_profile(PROFILE))
@given(data=st.data())
def test_fuzzed_search_spaces(workdir: Path, data: st.DataObject) -> None:
    marker = workdir / "pwned"
    (workdir / "recipe.yaml").write_text(yaml.safe_dump(RECIPE))
    (workdir / "study.yaml").write_text(yaml.safe_dump(STUDY))
    body = data.draw(rendered(data.draw(mutated(SPACE, SPACE_KEYS)), str(marker)))
    (workdir / "space.yaml").write_bytes(body)
    run_cli(["check", "study.yaml", "--samples", "8"], workdir, marker)


@settings(settings.get_profile(PROFILE))
@given(data=st.data())
def test_fuzzed_studies(workdir: Path, data: st.DataObject) -> None:
    marker = workdir / "pwned"
    (workdir / "recipe.yaml").write_text(yaml.safe_dump(RECIPE))
    (workdir / "space.yaml").write_text(yaml.safe_dump(SPACE))
    body = data.draw(rendered(data.draw(mutated(STUDY, STUDY_KEYS + RECIPE_KEYS)), str(marker)))
    (workdir / "study.yaml").write_bytes(body)
    run_cli(["check", "study.yaml", "--samples", "4"], workdir, marker)


def test_zz_report_how_many_files_were_tried() -> None:
    """Printed with -s: the number of fuzzed files each command read (for the long run)."""
    print(f"\nfuzzed files tried ({PROFILE} profile): {dict(TRIED)}, total {sum(TRIED.values())}")
