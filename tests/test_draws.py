"""A trial never draws a configuration another trial of the study holds, and studies that
share a seed do not share their draws (``drsearch.search.draws``, ``samplers.trial_seed``)."""

from __future__ import annotations

from pathlib import Path

import pytest

from drsearch.config.space import load_search_space
from drsearch.config.study import StudyConfig
from drsearch.search.draws import MAX_DRAWS, config_key, draw, held_configurations
from drsearch.search.store import StudyStore
from drsearch.search.trial import Outcome
from tests.conftest import make_recipe


def _store(tmp_path: Path, name: str, sampler: dict) -> StudyStore:
    cfg = StudyConfig(
        name=name, recipe=Path("r.yaml"), search_space=Path("x.yaml"), run_root=tmp_path,
        sampler=sampler, budget={"n_trials": 50},
    )  # fmt: skip
    s = StudyStore(cfg)
    s.set_budget(50)
    return s


def _space(tmp_path: Path, text: str) -> dict:
    path = tmp_path / "space.yaml"
    path.write_text(text)
    return load_search_space(path, make_recipe(tmp_path))


def _run(s: StudyStore, space: dict, n: int, tmp_path: Path) -> list[tuple[dict, int]]:
    out = []
    for _ in range(n):
        trial = s.claim()
        assert trial is not None
        params, draws = draw(trial, space, make_recipe(tmp_path))
        assert s.study.trials[trial.number].params == params  # what the trial records
        s.finish(trial._trial_id, Outcome("COMPLETE", 0.5, {}), {})
        out.append((params, draws))
    return out


LR = "optim.lr: {type: float, low: 1.0e-4, high: 1.0e-2, log: true}\n"


@pytest.mark.parametrize("sampler", ["random", "tpe"])
def test_two_studies_with_one_seed_draw_differently_and_each_is_reproducible(
    tmp_path: Path, sampler: str
) -> None:
    """The per-trial seed includes the study: a study warm-started from (or copied beside)
    another with the same seed no longer replays its draws; the same study drawn again
    (another storage, same name and seed) draws the same."""
    space = _space(tmp_path, LR)
    config = {"name": sampler, "seed": 0, "n_startup_trials": 2}
    a = _run(_store(tmp_path / "a", "first", config), space, 4, tmp_path)
    b = _run(_store(tmp_path / "b", "second", config), space, 4, tmp_path)
    again = _run(_store(tmp_path / "c", "first", config), space, 4, tmp_path)
    assert {config_key(p) for p, _ in a}.isdisjoint(config_key(p) for p, _ in b)
    assert a == again


def test_a_drawn_configuration_some_trial_holds_is_drawn_again(tmp_path: Path) -> None:
    """A space of three configurations: the first three trials draw all three (redrawing
    what is taken, as often as needed), a queued configuration is avoided too, and once the
    space is exhausted a trial runs a repeat after MAX_DRAWS draws, recorded."""
    space = _space(tmp_path, "train.batch_size: {type: categorical, choices: [8, 16, 32]}\n")
    s = _store(tmp_path, "small", {"name": "random", "seed": 3})
    first = _run(s, space, 3, tmp_path)
    assert sorted(p["train.batch_size"] for p, _ in first) == [8, 16, 32]
    assert sum(d for _, d in first) > 3  # some draw was taken and drawn again
    ((_, draws),) = _run(s, space, 1, tmp_path)
    assert draws == MAX_DRAWS  # nothing new is left: the last draw runs
    # a queued configuration (a warm start another runner queued, say) is held too
    s.study.enqueue_trial({"train.batch_size": 64})
    held = held_configurations(s.study.get_trials(), number=-1)
    assert config_key({"train.batch_size": 64}) in held and len(held) == 4
