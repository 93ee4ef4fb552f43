"""LR schedule values against hand-computed numbers, per group, and as applied to an optimizer."""

from __future__ import annotations

import math

import pytest
import torch

from drsearch.config import Recipe, parse_config
from drsearch.train.schedule import (
    LRController,
    StepPlan,
    lr_factor,
    restart_epochs,
    schedule_table,
)

PLAN = StepPlan(steps_per_epoch=10, epochs=10)  # T = 100 optimizer steps


def recipe(**schedule: object) -> Recipe:
    return parse_config(
        Recipe,
        {
            "optim": {"lr": 0.1, "backbone_lr_mult": 0.1},
            "train": {"epochs": 10},
            "schedule": schedule,
        },
        "test",
    )


def factor(step: int, **schedule: object) -> float:
    r = recipe(**schedule)
    return lr_factor(step, r.schedule, PLAN, r.optim.lr)


@pytest.mark.parametrize(
    ("schedule", "step", "expected"),
    [
        # linear warmup over W = 20 steps from f = 0.1: f + (1 - f) * s / W
        ({"name": "none", "warmup_epochs": 2, "warmup_start_factor": 0.1}, 0, 0.1),
        ({"name": "none", "warmup_epochs": 2, "warmup_start_factor": 0.1}, 10, 0.55),
        ({"name": "none", "warmup_epochs": 2, "warmup_start_factor": 0.1}, 19, 0.955),
        ({"name": "none", "warmup_epochs": 2, "warmup_start_factor": 0.1}, 20, 1.0),
        ({"name": "none", "warmup_epochs": 0.5, "warmup_start_factor": 0.0}, 2, 0.4),
        # cosine after warmup, U = 80, m = min_lr / lr = 0.1
        ({"name": "cosine", "warmup_epochs": 2, "min_lr": 0.01}, 20, 1.0),
        ({"name": "cosine", "warmup_epochs": 2, "min_lr": 0.01}, 60, 0.55),
        (
            {"name": "cosine", "warmup_epochs": 2, "min_lr": 0.01},
            99,
            0.1 + 0.9 * (1 + math.cos(math.pi * 79 / 80)) / 2,
        ),
        ({"name": "cosine", "warmup_epochs": 0, "min_lr": 0.0}, 0, 1.0),
        ({"name": "cosine", "warmup_epochs": 0, "min_lr": 0.0}, 50, 0.5),
        # SGDR without warmup: cycles of 20, 40, 80 steps, each restarting at the full LR
        ({"name": "cosine_restarts", "t0": 2, "t_mult": 2}, 0, 1.0),
        ({"name": "cosine_restarts", "t0": 2, "t_mult": 2}, 10, 0.5),
        ({"name": "cosine_restarts", "t0": 2, "t_mult": 2}, 20, 1.0),
        ({"name": "cosine_restarts", "t0": 2, "t_mult": 2}, 40, 0.5),
        ({"name": "cosine_restarts", "t0": 2, "t_mult": 2}, 60, 1.0),
        ({"name": "cosine_restarts", "t0": 3, "t_mult": 1, "warmup_epochs": 1}, 10, 1.0),
        ({"name": "cosine_restarts", "t0": 3, "t_mult": 1, "warmup_epochs": 1}, 40, 1.0),
        # step decay every 3 epochs (30 steps) after a 1-epoch warmup
        ({"name": "step", "step_epochs": 3, "gamma": 0.5, "warmup_epochs": 1}, 10, 1.0),
        ({"name": "step", "step_epochs": 3, "gamma": 0.5, "warmup_epochs": 1}, 39, 1.0),
        ({"name": "step", "step_epochs": 3, "gamma": 0.5, "warmup_epochs": 1}, 40, 0.5),
        ({"name": "step", "step_epochs": 3, "gamma": 0.5, "warmup_epochs": 1}, 70, 0.25),
        ({"name": "plateau", "warmup_epochs": 1, "warmup_start_factor": 0.5}, 5, 0.75),
        ({"name": "plateau"}, 90, 1.0),
    ],
)
def test_factor_matches_hand_computed(schedule: dict, step: int, expected: float) -> None:
    assert factor(step, **schedule) == pytest.approx(expected, abs=1e-12)


def test_cosine_restarts_without_warmup_starts_at_full_lr_for_both_groups() -> None:
    rows = schedule_table(recipe(name="cosine_restarts", t0=2), PLAN)
    first = {group: lr for epoch, step, group, lr in rows if step == 0}
    assert first == {"backbone": pytest.approx(0.01), "head": pytest.approx(0.1)}


def test_every_group_gets_its_base_lr_times_the_same_factor() -> None:
    r = recipe(name="cosine", warmup_epochs=2, min_lr=0.001)
    rows = schedule_table(r, PLAN)
    assert len(rows) == 2 * PLAN.total
    for epoch, step, group, lr in rows:
        base = 0.1 * (0.1 if group == "backbone" else 1.0)
        assert lr == pytest.approx(base * lr_factor(step, r.schedule, PLAN, 0.1))
        assert epoch == step // 10
    head_at_10 = [lr for _, s, g, lr in rows if s == 10 and g == "head"]
    backbone_at_10 = [lr for _, s, g, lr in rows if s == 10 and g == "backbone"]
    # warmup halfway from 0.1x: 0.55 * 0.1 for the head, 0.55 * 0.01 for the backbone
    assert head_at_10 == [pytest.approx(0.055)] and backbone_at_10 == [pytest.approx(0.0055)]


def test_restart_epochs() -> None:
    assert restart_epochs(recipe(name="cosine_restarts", t0=2, t_mult=2).schedule, 10) == [2, 6]
    r = recipe(name="cosine_restarts", t0=3, warmup_epochs=1).schedule
    assert restart_epochs(r, 10) == [4, 7]
    assert restart_epochs(recipe(name="cosine").schedule, 10) == []


def _optimizer() -> torch.optim.Optimizer:
    groups = [
        {"name": "backbone", "params": [torch.nn.Parameter(torch.zeros(1))], "base_lr": 0.01},
        {"name": "head", "params": [torch.nn.Parameter(torch.zeros(1))], "base_lr": 0.1},
    ]
    return torch.optim.SGD(groups, lr=0.1)


def test_controller_sets_every_group_each_step() -> None:
    r = recipe(name="cosine", warmup_epochs=2, min_lr=0.0)
    opt = _optimizer()
    ctl = LRController(opt, r, PLAN)
    assert ctl.group_lrs() == {"backbone": pytest.approx(0.001), "head": pytest.approx(0.01)}
    for _ in range(60):
        ctl.step()
    assert [g["lr"] for g in opt.param_groups] == [pytest.approx(0.005), pytest.approx(0.05)]


def test_plateau_reduces_after_patience_and_state_round_trips() -> None:
    r = recipe(name="plateau", plateau_patience=1, plateau_factor=0.5)
    opt = _optimizer()
    ctl = LRController(opt, r, PLAN)
    for value in (0.5, 0.6, 0.6, 0.55):  # best 0.6, then two epochs without gain
        ctl.end_epoch(value, higher_is_better=True)
    assert ctl.group_lrs()["head"] == pytest.approx(0.05)
    again = LRController(_optimizer(), r, PLAN)
    again.load_state_dict(ctl.state_dict())
    assert again.group_lrs() == ctl.group_lrs()
