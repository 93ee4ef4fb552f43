"""Populations of configurations (their true confusion rows) and the training noise around them.

A configuration's truth is its rows: P(called k | grade g), a 5 x 5 matrix whose rows sum to
1. A *trained model* of the configuration (one fold, one seed) has rows of its own, drawn
around the configuration's by ``train``; its validation counts are multinomial draws from
them. What ships is a trained model (or an ensemble of them), so the truth that decides
"truly feasible" is the shipped model's rows, at the population's grade proportions.

Populations (``POPULATIONS``; ``role`` says which tuned the racing policy's defaults):

- ``aptos`` (tuning): the ordinal latent model of issue 21 (a grade-g image scores g + noise of
  sd sigma 0.35-0.75 and is called the grade its score falls in; cuts shifted by a calling bias
  of sd 0.15 and jittered; 0-15% of grade-3/4 images missed outright, called 0 or 1), APTOS
  2019's proportions, the default constraints;
- ``hard`` (tuning): the same with misses up to 25% and bias sd 0.25 (most configurations near
  or past a boundary);
- ``independent`` (reported): accuracy, exact-grade severe-NPDR and PDR sensitivity drawn
  independently, U(.70,.86), U(.70,.97), U(.80,.99) (the issue's re-implementation), with its
  own constraints: ``sensitivity_severe_npdr >= 0.90`` and ``sensitivity_pdr >= 0.95``;
- ``tradeoff`` (reported): the latent model where the most accurate configurations are the
  least sensitive (a lean u ~ U(0,1): low u, small sigma but under-calling and up to 20% of
  severe images missed; high u, the reverse);
- ``eyepacs`` (held out): aptos's configurations on a dataset of 10,000 images with EyePACS's
  grade proportions (Kaggle's training labels: 25,810 / 2,443 / 5,292 / 873 / 708), so the
  validation split holds 1,470 / 139 / 301 / 50 / 40 images;
- ``overcall`` (held out): over-calling configurations (calling bias mean -0.25: cuts low,
  grades called too high), so the specificity constraints bind instead of the sensitivities.

Training noise (``LEVELS``): each trained model's rows are its configuration's with (1) a
shift of every diagonal on the logit scale shared by the model's grades (a run that trained
well or badly), (2) a further shift per grade, (3) an ordinal calling shift (a share of every
row moved one grade up or down) and (4) at ``high`` a collapse: with probability 3% the model
calls a share w ~ U(.5, 1) of every grade's images one grade k drawn at random (the demo's
fold that scored 0.071 while its others scored ~0.8). ``spread`` measures what each level
gives; ``bench/README.md`` "Issue 33" states the spreads and why these levels.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from scipy.special import expit, logit
from scipy.stats import norm

from drsearch.clinical import DEFAULT_CONSTRAINTS

#: APTOS 2019's grade counts (3,662 images); EyePACS (Kaggle 2015) training labels.
APTOS = np.array([1805, 370, 999, 193, 295])
EYEPACS = np.array([25810, 2443, 5292, 873, 708])
DEFAULT = tuple((c.metric, c.min) for c in DEFAULT_CONSTRAINTS)
EXACT = (("sensitivity_severe_npdr", 0.90), ("sensitivity_pdr", 0.95))

Rows = np.ndarray  # (..., 5, 5), rows sum to 1


@dataclass(frozen=True)
class Population:
    name: str
    counts: np.ndarray  # the dataset's grade counts: truth is judged at these proportions
    constraints: tuple[tuple[str, float], ...]
    draw: Callable[[np.random.Generator, int], Rows]
    role: str  # tuning / reported / held out

    @property
    def val(self) -> np.ndarray:
        """One fold's (the search's validation split's) grade counts: 20% of the data."""
        return np.round(self.counts * 0.2).astype(int)


def latent_rows(sigma, bias, cut_jitter, miss) -> Rows:  # noqa: ANN001 (arrays)
    """Rows of the ordinal latent model: sigma, bias (n,), cut_jitter (n, 4), miss (n, 2)."""
    n = len(sigma)
    cuts = np.array([0.5, 1.5, 2.5, 3.5])[None, :] + bias[:, None]
    cuts = np.sort(cuts + cut_jitter, axis=1)
    edges = np.concatenate([np.full((n, 1), -np.inf), cuts, np.full((n, 1), np.inf)], axis=1)
    grades = np.arange(5)[None, :, None]
    rows = np.diff(norm.cdf((edges[:, None, :] - grades) / sigma[:, None, None]), axis=2)
    for k, g in enumerate((3, 4)):
        hard = miss[:, k][:, None]
        rows[:, g, :] *= 1 - hard
        rows[:, g, 0] += hard[:, 0] / 2
        rows[:, g, 1] += hard[:, 0] / 2
    return rows / rows.sum(axis=2, keepdims=True)


def _latent(sigma=(0.35, 0.75), bias_sd=0.15, jitter_sd=0.10, miss=(0.0, 0.15), bias_mean=0.0):  # noqa: ANN001, ANN202
    def draw(rng: np.random.Generator, n: int) -> Rows:
        s = rng.uniform(*sigma, size=n)
        b = rng.normal(bias_mean, bias_sd, size=n)
        j = rng.normal(0.0, jitter_sd, size=(n, 4))
        m = rng.uniform(*miss, size=(n, 2))
        return latent_rows(s, b, j, m)

    return draw


def _tradeoff(rng: np.random.Generator, n: int) -> Rows:
    u = rng.uniform(0.0, 1.0, size=n)  # 0: accurate but insensitive; 1: sensitive, less accurate
    sigma = np.clip(0.35 + 0.40 * u + rng.normal(0.0, 0.03, size=n), 0.3, 0.8)
    bias = 0.25 * (0.5 - u) + rng.normal(0.0, 0.08, size=n)
    jitter = rng.normal(0.0, 0.10, size=(n, 4))
    miss = 0.20 * (1 - u)[:, None] + rng.uniform(0.0, 0.03, size=(n, 2))
    return latent_rows(sigma, bias, jitter, miss)


#: Where the off-diagonal mass of each grade's row goes (independent population).
_SPILL = np.array(
    [
        [0.0, 0.50, 0.45, 0.03, 0.02],
        [0.50, 0.0, 0.45, 0.03, 0.02],
        [0.25, 0.35, 0.0, 0.30, 0.10],
        [0.0, 0.10, 0.60, 0.0, 0.30],
        [0.0, 0.10, 0.30, 0.60, 0.0],
    ]
)
_BASE = logit(np.array([0.93, 0.40, 0.70]))  # grades 0-2's diagonals, shifted together


def independent_rows(acc: np.ndarray, s3: np.ndarray, s4: np.ndarray, counts=APTOS) -> Rows:  # noqa: ANN001
    """Rows with exact-grade sensitivities ``s3``, ``s4`` and accuracy ``acc`` at ``counts``'
    proportions: grades 0-2's diagonals share one logit shift, found by bisection."""
    w = counts / counts.sum()
    need = acc - w[3] * s3 - w[4] * s4  # what grades 0-2 must contribute
    lo, hi = np.full(len(acc), -8.0), np.full(len(acc), 8.0)
    for _ in range(50):
        t = (lo + hi) / 2
        got = (w[:3] * expit(_BASE[None, :] + t[:, None])).sum(axis=1)
        lo, hi = np.where(got < need, t, lo), np.where(got < need, hi, t)
    diag = np.concatenate([expit(_BASE[None, :] + ((lo + hi) / 2)[:, None]), s3[:, None],
                           s4[:, None]], axis=1)  # fmt: skip
    rows = (1 - diag)[:, :, None] * _SPILL[None, :, :]
    rows[:, np.arange(5), np.arange(5)] = diag
    return rows


def _independent(rng: np.random.Generator, n: int) -> Rows:
    acc = rng.uniform(0.70, 0.86, size=n)
    s3 = rng.uniform(0.70, 0.97, size=n)
    s4 = rng.uniform(0.80, 0.99, size=n)
    return independent_rows(acc, s3, s4)


POPULATIONS: dict[str, Population] = {
    "aptos": Population("aptos", APTOS, DEFAULT, _latent(), "tuning"),
    "hard": Population(
        "hard", APTOS, DEFAULT, _latent(bias_sd=0.25, jitter_sd=0.15, miss=(0.0, 0.25)), "tuning"
    ),
    "independent": Population("independent", APTOS, EXACT, _independent, "reported"),
    "tradeoff": Population("tradeoff", APTOS, DEFAULT, _tradeoff, "reported"),
    "eyepacs": Population(
        "eyepacs",
        np.round(EYEPACS / EYEPACS.sum() * 10_000).astype(int),
        DEFAULT,
        _latent(),
        "held out",
    ),  # fmt: skip
    "overcall": Population(
        "overcall", APTOS, DEFAULT, _latent(bias_mean=-0.25, miss=(0.0, 0.10)), "held out"
    ),
}


@dataclass(frozen=True)
class Level:
    """Training noise: logit sd of the shared and per-grade diagonal shifts, sd of the ordinal
    calling shift (share of a row moved one grade), probability of a collapsed run."""

    shared: float
    grade: float
    calling: float
    miss: float
    collapse: float


LEVELS = {
    "none": Level(0.0, 0.0, 0.0, 0.0, 0.0),
    "low": Level(0.04, 0.05, 0.01, 0.010, 0.0),
    "moderate": Level(0.08, 0.09, 0.02, 0.018, 0.0),
    "high": Level(0.16, 0.18, 0.04, 0.036, 0.03),
}


def _shift(rows: Rows, share: np.ndarray, up: bool) -> Rows:
    """Move ``share`` (broadcast over rows) of every row one grade up (or down)."""
    moved = np.zeros_like(rows)
    if up:
        moved[..., 1:] = rows[..., :-1]
        moved[..., -1] += rows[..., -1]
    else:
        moved[..., :-1] = rows[..., 1:]
        moved[..., 0] += rows[..., 0]
    return (1 - share) * rows + share * moved


def train(rng: np.random.Generator, rows: Rows, level: Level, size: int) -> Rows:
    """``size`` trained models of each configuration: (n, size, 5, 5) rows around ``rows``."""
    n = len(rows)
    out = np.broadcast_to(rows[:, None], (n, size, 5, 5)).copy()
    if level == LEVELS["none"]:
        return out
    eye = np.arange(5)
    diag = np.clip(out[..., eye, eye], 1e-9, 1 - 1e-9)  # (n, size, 5)
    shift = level.shared * rng.normal(size=(n, size, 1)) + level.grade * rng.normal(
        size=(n, size, 5)
    )
    new = expit(logit(diag) + shift)
    out *= ((1 - new) / (1 - diag))[..., None]
    out[..., eye, eye] = new
    u = level.calling * rng.normal(size=(n, size, 1, 1))
    out = np.where(u > 0, _shift(out, np.abs(u), True), _shift(out, np.abs(u), False))
    # misses of grades 3-4: a share moved to (or, negative, back from) calls 0 and 1, clipped
    # symmetrically to the mass there is (mean-preserving)
    for g in (3, 4):
        d = level.miss * rng.normal(size=(n, size))
        low = out[..., g, 0] + out[..., g, 1]
        cap = np.minimum(low, out[..., g, g])  # symmetric, never more than is there
        d = np.clip(d, -cap, cap)
        take = np.where(d > 0, d / np.maximum(out[..., g, g], 1e-12), 0.0)
        give = np.where(d < 0, -d / np.maximum(low, 1e-12), 0.0)
        moved_up = out[..., g, :2] * give[..., None]
        out[..., g, :2] = out[..., g, :2] - moved_up + (out[..., g, g] * take / 2)[..., None]
        out[..., g, g] = out[..., g, g] * (1 - take) + moved_up.sum(axis=-1)
    if level.collapse > 0:
        hit = rng.random((n, size)) < level.collapse
        w = rng.uniform(0.5, 1.0, size=(n, size))[..., None, None] * hit[..., None, None]
        called = np.eye(5)[rng.integers(0, 5, size=(n, size))][:, :, None, :]  # (n,size,1,5)
        out = (1 - w) * out + w * called
    return out / out.sum(axis=-1, keepdims=True)


def spread(name: str, level: str, n: int = 400, size: int = 20, seed: int = 7) -> dict:
    """Seed-to-seed spread a level gives in a population: the median over configurations of the
    standard deviation across ``size`` trained models of true accuracy and of the severe
    grades' rates (referred and exact), in points."""
    from .scoring import metric_rates

    pop = POPULATIONS[name]
    rng = np.random.default_rng(seed)
    models = train(rng, pop.draw(rng, n), LEVELS[level], size)
    cm = models * pop.counts[None, None, :, None]
    out = {}
    for metric in ("accuracy", "referred_severe_npdr", "referred_pdr", "sensitivity_severe_npdr",
                   "sensitivity_pdr", "referable_specificity"):  # fmt: skip
        out[metric] = float(np.median(metric_rates(metric, cm).std(axis=1)) * 100)
    return out
