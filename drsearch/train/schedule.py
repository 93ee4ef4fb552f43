"""Learning-rate schedule: one multiplicative factor per optimizer step, applied to every group.

With ``spe`` optimizer steps per epoch, ``W = warmup_epochs * spe``, ``T = epochs * spe``,
``f = warmup_start_factor``, ``m = min_lr / lr`` and step ``s`` counted from 0::

    s < W            factor = f + (1 - f) * s / W                       (linear warmup)
    otherwise, u = s - W, U = T - W:
    none             1
    cosine           m + (1 - m) * (1 + cos(pi * u / U)) / 2
    cosine_restarts  the cosine within each cycle; cycles last t0*spe, t0*spe*t_mult, ...
                     steps and each restarts at the full LR (SGDR)
    step             gamma ** floor(u / (step_epochs * spe))
    plateau          product of plateau_factor over every reduction so far (epoch level)

A group's LR is its base LR (``lr``; ``lr * backbone_lr_mult`` for the backbone) times the
factor. Everything but ``plateau`` is a pure function of the step, so ``drsearch lr`` can
show the schedule without training.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from drsearch.config.recipe import Recipe, ScheduleConfig


def train_batch_count(n_train: int, batch_size: int) -> int:
    """Batches per training epoch (full batches only; at least one)."""
    return max(1, n_train // batch_size)


def steps_per_epoch(n_train: int, recipe: Recipe) -> int:
    """Optimizer steps per epoch: full batches, grouped by gradient accumulation."""
    return math.ceil(train_batch_count(n_train, recipe.train.batch_size) / recipe.train.grad_accum)


@dataclass(frozen=True)
class StepPlan:
    """How many optimizer steps a run takes."""

    steps_per_epoch: int
    epochs: int

    @property
    def total(self) -> int:
        return self.steps_per_epoch * self.epochs


def lr_factor(step: int, cfg: ScheduleConfig, plan: StepPlan, lr: float) -> float:
    """The schedule factor at optimizer step ``step`` (0-based); plateau reductions excluded."""
    spe = plan.steps_per_epoch
    warmup = cfg.warmup_epochs * spe
    if step < warmup:
        f = cfg.warmup_start_factor
        return f + (1 - f) * step / warmup
    u = step - warmup
    remaining = plan.total - warmup
    m = min(cfg.min_lr / lr, 1.0)
    if cfg.name == "cosine":
        return _cosine(min(u / remaining, 1.0), m)
    if cfg.name == "cosine_restarts":
        return _cosine(_cycle_position(u, cfg.t0 * spe, cfg.t_mult), m)
    if cfg.name == "step":
        return cfg.gamma ** math.floor(u / (cfg.step_epochs * spe))
    return 1.0  # none, plateau (reductions are applied by LRController)


def _cosine(progress: float, m: float) -> float:
    return m + (1 - m) * (1 + math.cos(math.pi * progress)) / 2


def _cycle_position(u: float, first: float, t_mult: float) -> float:
    """Fraction of the current SGDR cycle elapsed at ``u`` steps after warmup."""
    length = first
    while u >= length:
        u -= length
        length *= t_mult
    return u / length


def restart_epochs(cfg: ScheduleConfig, epochs: int) -> list[float]:
    """Epochs (from 0, possibly fractional) at which cosine_restarts jumps back to full LR."""
    if cfg.name != "cosine_restarts":
        return []
    out, at, length = [], cfg.warmup_epochs + cfg.t0, cfg.t0
    while at < epochs:
        out.append(at)
        length *= cfg.t_mult
        at += length
    return out


class LRController:
    """Sets every parameter group's LR before each optimizer step; owns plateau state.

    Each group must carry ``base_lr`` (its LR before the schedule) and ``name``.
    """

    def __init__(self, optimizer: Any, recipe: Recipe, plan: StepPlan) -> None:
        self.optimizer = optimizer
        self.cfg = recipe.schedule
        self.lr = recipe.optim.lr
        self.plan = plan
        self.step_count = 0
        self.plateau_scale = 1.0
        self._best: float | None = None
        self._bad_epochs = 0
        self.apply()

    def factor(self) -> float:
        return lr_factor(self.step_count, self.cfg, self.plan, self.lr) * self.plateau_scale

    def apply(self) -> None:
        """Write the LR for the current step into every group."""
        factor = self.factor()
        for group in self.optimizer.param_groups:
            group["lr"] = group["base_lr"] * factor

    def step(self) -> None:
        """Advance after an optimizer step."""
        self.step_count += 1
        self.apply()

    def end_epoch(self, monitored: float | None, higher_is_better: bool) -> None:
        """Plateau: reduce by ``plateau_factor`` after ``plateau_patience`` epochs without gain."""
        if self.cfg.name != "plateau" or monitored is None or math.isnan(monitored):
            return
        if self.step_count < self.cfg.warmup_epochs * self.plan.steps_per_epoch:
            return
        value = monitored if higher_is_better else -monitored
        if self._best is None or value > self._best:
            self._best, self._bad_epochs = value, 0
            return
        self._bad_epochs += 1
        if self._bad_epochs > self.cfg.plateau_patience:
            self.plateau_scale *= self.cfg.plateau_factor
            self._bad_epochs = 0
            self.apply()

    def group_lrs(self) -> dict[str, float]:
        """The LR each named group uses right now."""
        return {g["name"]: float(g["lr"]) for g in self.optimizer.param_groups}

    def state_dict(self) -> dict[str, Any]:
        return {
            "step_count": self.step_count,
            "plateau_scale": self.plateau_scale,
            "best": self._best,
            "bad_epochs": self._bad_epochs,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.step_count = int(state["step_count"])
        self.plateau_scale = float(state["plateau_scale"])
        self._best = state["best"]
        self._bad_epochs = int(state["bad_epochs"])
        self.apply()


def schedule_table(recipe: Recipe, plan: StepPlan) -> list[tuple[int, int, str, float]]:
    """``(epoch, step, group, lr)`` for every optimizer step and group, without training."""
    base = {"backbone": recipe.optim.lr * recipe.optim.backbone_lr_mult, "head": recipe.optim.lr}
    rows = []
    for step in range(plan.total):
        factor = lr_factor(step, recipe.schedule, plan, recipe.optim.lr)
        for group, lr in base.items():
            rows.append((step // plan.steps_per_epoch, step, group, lr * factor))
    return rows
