"""A synthetic fundus dataset in the APTOS 2019 layout, for demos and tests.

Each image is drawn like a colour fundus photograph: dark background, circular field of view
with a reddish-orange retina, optic disc, macula and a vessel tree. Lesions follow the ICDR
scale: microaneurysms from grade 1; haemorrhages and hard exudates from grade 2; more of
them plus venous beading at grade 3; neovascularisation and pre-retinal haemorrhage at grade 4.
Lesion counts come from a continuous severity ``grade + U(-0.6, 0.6)``, so neighbouring grades
overlap and grading is learnable but not trivial. Everything is deterministic for a seed.
"""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from drsearch import NUM_CLASSES
from drsearch.errors import DataError
from drsearch.io import write_text_atomic

#: Grade shares of EyePACS (Kaggle 2015) training labels, rounded: 73/7/15/2.5/2.5 %.
IMBALANCE = {
    "eyepacs": (0.73, 0.07, 0.15, 0.025, 0.025),
    "balanced": (0.2, 0.2, 0.2, 0.2, 0.2),
}


@dataclass(frozen=True)
class _Fundus:
    """Geometry of one drawn eye (pixels)."""

    cx: float
    cy: float
    radius: float
    disc: tuple[float, float]
    macula: tuple[float, float]


def grade_counts(n: int, imbalance: str) -> list[int]:
    """Exact per-grade image counts for ``n`` images (largest-remainder rounding)."""
    shares = IMBALANCE[imbalance]
    raw = [n * s for s in shares]
    counts = [int(r) for r in raw]
    order = sorted(range(NUM_CLASSES), key=lambda g: raw[g] - counts[g], reverse=True)
    for g in order[: n - sum(counts)]:
        counts[g] += 1
    return counts


def write_synthetic_dataset(
    out: Path, n: int = 600, size: int = 128, seed: int = 0, imbalance: str = "eyepacs"
) -> Path:
    """Write ``train.csv`` and ``train_images/<id>.png`` under ``out``; return ``out``."""
    if imbalance not in IMBALANCE:
        raise DataError(f"--imbalance must be one of {sorted(IMBALANCE)}, got {imbalance!r}")
    if n < NUM_CLASSES * 2:
        raise DataError(f"--n must be >= {NUM_CLASSES * 2} for every grade to appear, got {n}")
    labels = np.repeat(np.arange(NUM_CLASSES), grade_counts(n, imbalance))
    np.random.default_rng(seed).shuffle(labels)
    images = out / "train_images"
    images.mkdir(parents=True, exist_ok=True)
    rows = []
    for i, grade in enumerate(labels.tolist()):
        image_id = f"synth{seed:03d}_{i:05d}"
        img = draw_fundus(int(grade), size, np.random.default_rng([seed, i]))
        cv2.imwrite(str(images / f"{image_id}.png"), cv2.cvtColor(img, cv2.COLOR_RGB2BGR))
        rows.append((image_id, grade))
    table = io.StringIO()
    writer = csv.writer(table)
    writer.writerow(["id_code", "diagnosis"])
    writer.writerows(rows)
    write_text_atomic(out / "train.csv", table.getvalue())  # last: marks a complete set
    return out


def draw_fundus(grade: int, size: int, rng: np.random.Generator) -> np.ndarray:
    """One RGB uint8 fundus image of the given ICDR grade."""
    eye = _geometry(size, rng)
    img = _retina(size, eye, rng)
    _draw_disc_and_macula(img, eye, rng)
    vessels = _draw_vessels(img, eye, rng)
    severity = grade + rng.uniform(-0.6, 0.6)
    _draw_lesions(img, eye, vessels, severity, rng)
    img = cv2.GaussianBlur(img, (0, 0), sigmaX=max(0.4, size / 400) * rng.uniform(0.7, 1.6))
    img = img.astype(np.float32) * rng.uniform(0.8, 1.15) + rng.normal(0, 3, img.shape)
    mask = _disc_mask(size, eye.cx, eye.cy, eye.radius)
    img[~mask] = rng.uniform(0, 6)
    return np.clip(img, 0, 255).astype(np.uint8)


def _geometry(size: int, rng: np.random.Generator) -> _Fundus:
    cx = size / 2 + rng.uniform(-0.03, 0.03) * size
    cy = size / 2 + rng.uniform(-0.03, 0.03) * size
    radius = size * rng.uniform(0.43, 0.48)
    side = rng.choice([-1.0, 1.0])  # left or right eye: disc on the nasal side
    disc = (cx + side * radius * rng.uniform(0.35, 0.45), cy + radius * rng.uniform(-0.08, 0.08))
    macula = (cx - side * radius * rng.uniform(0.05, 0.15), cy + radius * rng.uniform(-0.05, 0.05))
    return _Fundus(cx, cy, radius, disc, macula)


def _disc_mask(size: int, cx: float, cy: float, radius: float) -> np.ndarray:
    yy, xx = np.mgrid[0:size, 0:size]
    return (xx - cx) ** 2 + (yy - cy) ** 2 <= radius**2


def _retina(size: int, eye: _Fundus, rng: np.random.Generator) -> np.ndarray:
    """Reddish-orange background, darker towards the rim, with low-frequency mottling."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    dist = np.sqrt((xx - eye.cx) ** 2 + (yy - eye.cy) ** 2) / eye.radius
    shade = 1.0 - 0.45 * np.clip(dist, 0, 1) ** 2
    base = np.array([rng.uniform(170, 215), rng.uniform(70, 110), rng.uniform(25, 55)])
    coarse = rng.normal(0, 1, (8, 8)).astype(np.float32)
    mottle = cv2.resize(coarse, (size, size), interpolation=cv2.INTER_CUBIC) * 6
    img = base[None, None, :] * shade[..., None] + mottle[..., None]
    return np.ascontiguousarray(img, dtype=np.float32)


def _draw_disc_and_macula(img: np.ndarray, eye: _Fundus, rng: np.random.Generator) -> None:
    r = eye.radius
    disc_r = r * rng.uniform(0.12, 0.16)
    layer = np.zeros_like(img)
    cv2.circle(layer, _pt(eye.disc), int(disc_r), (60, 90, 70), -1, cv2.LINE_AA)
    cv2.circle(layer, _pt(eye.disc), int(disc_r * 0.45), (30, 40, 40), -1, cv2.LINE_AA)
    img += cv2.GaussianBlur(layer, (0, 0), sigmaX=max(1.0, disc_r * 0.25))
    mac = np.zeros_like(img)
    cv2.circle(mac, _pt(eye.macula), int(r * 0.14), (45, 30, 15), -1, cv2.LINE_AA)
    img -= cv2.GaussianBlur(mac, (0, 0), sigmaX=max(1.0, r * 0.07))


def _draw_vessels(img: np.ndarray, eye: _Fundus, rng: np.random.Generator) -> list[np.ndarray]:
    """Four arcades leaving the disc, each a bending polyline with a few branches."""
    r = eye.radius
    toward_macula = np.arctan2(eye.macula[1] - eye.disc[1], eye.macula[0] - eye.disc[0])
    paths: list[np.ndarray] = []
    for angle in (
        toward_macula - 1.0,
        toward_macula + 1.0,
        toward_macula + 2.6,
        -2.6 + toward_macula,
    ):
        trunk = _walk(
            eye.disc, angle, r * 1.1, rng, bend=0.06 * np.sign(np.sin(angle - toward_macula) + 1e-6)
        )
        paths.append(trunk)
        for start in trunk[rng.integers(3, len(trunk) - 3, size=2)]:
            paths.append(_walk(tuple(start), angle + rng.uniform(-0.9, 0.9), r * 0.5, rng, 0.03))
    for k, path in enumerate(paths):
        width = max(1, int(round(r * (0.028 if k % 3 == 0 else 0.016))))
        color = (110 + rng.uniform(-10, 10), 25, 25)
        cv2.polylines(img, [path.astype(np.int32)], False, color, width, cv2.LINE_AA)
    return paths


def _walk(
    start: tuple[float, float], angle: float, length: float, rng: np.random.Generator, bend: float
) -> np.ndarray:
    steps = 16
    pts = [np.array(start, dtype=np.float64)]
    for _ in range(steps):
        angle += bend + rng.normal(0, 0.08)
        pts.append(pts[-1] + length / steps * np.array([np.cos(angle), np.sin(angle)]))
    return np.stack(pts)


def _draw_lesions(
    img: np.ndarray,
    eye: _Fundus,
    vessels: list[np.ndarray],
    severity: float,
    rng: np.random.Generator,
) -> None:
    r = eye.radius
    dark_red = (95, 10, 10)
    n_ma = rng.poisson(max(0.0, severity - 0.4) * 4 + (0.3 if severity < 0.4 else 0))
    for _ in range(n_ma):
        cv2.circle(
            img,
            _pt(_spot(eye, rng)),
            max(1, int(round(r * rng.uniform(0.022, 0.035)))),
            dark_red,
            -1,
            cv2.LINE_AA,
        )
    for _ in range(rng.poisson(max(0.0, severity - 1.4) * 4)):
        axes = (int(r * rng.uniform(0.06, 0.11)), int(r * rng.uniform(0.04, 0.08)))
        cv2.ellipse(
            img,
            _pt(_spot(eye, rng)),
            axes,
            rng.uniform(0, 180),
            0,
            360,
            (120, 15, 10),
            -1,
            cv2.LINE_AA,
        )
    for _ in range(rng.poisson(max(0.0, severity - 1.5) * 3)):
        centre = np.array(_spot(eye, rng))
        for _ in range(rng.integers(2, 6)):
            p = centre + rng.normal(0, r * 0.04, 2)
            cv2.circle(
                img,
                _pt(p),
                max(1, int(round(r * rng.uniform(0.02, 0.04)))),
                (245, 215, 90),
                -1,
                cv2.LINE_AA,
            )
    if severity > 2.4 and rng.random() < 0.8:
        _venous_beading(img, vessels[rng.integers(0, len(vessels))], r, rng)
    if severity > 3.3:
        _neovascularisation(img, eye, rng)
        if rng.random() < 0.6:
            centre = _spot(eye, rng)
            axes = (int(r * rng.uniform(0.12, 0.2)), int(r * rng.uniform(0.08, 0.12)))
            cv2.ellipse(img, _pt(centre), axes, 0, 0, 180, (90, 5, 5), -1, cv2.LINE_AA)


def _venous_beading(img: np.ndarray, path: np.ndarray, r: float, rng: np.random.Generator) -> None:
    for point in path[2::2]:
        cv2.circle(
            img,
            _pt(point),
            max(1, int(round(r * rng.uniform(0.045, 0.06)))),
            (85, 10, 15),
            -1,
            cv2.LINE_AA,
        )


def _neovascularisation(img: np.ndarray, eye: _Fundus, rng: np.random.Generator) -> None:
    """A tangle of fine, looping new vessels on or near the disc, or elsewhere."""
    centre = np.array(eye.disc if rng.random() < 0.6 else _spot(eye, rng))
    r = eye.radius
    for _ in range(rng.integers(6, 12)):
        start = centre + rng.normal(0, r * 0.06, 2)
        loop = _walk(tuple(start), rng.uniform(0, 2 * np.pi), r * 0.25, rng, bend=0.45)
        width = max(1, int(round(r / 50)))
        cv2.polylines(img, [loop.astype(np.int32)], False, (150, 20, 30), width, cv2.LINE_AA)


def _spot(eye: _Fundus, rng: np.random.Generator) -> tuple[float, float]:
    """A random point well inside the field of view."""
    rho = eye.radius * 0.85 * np.sqrt(rng.random())
    phi = rng.uniform(0, 2 * np.pi)
    return eye.cx + rho * np.cos(phi), eye.cy + rho * np.sin(phi)


def _pt(p: tuple[float, float] | np.ndarray) -> tuple[int, int]:
    return int(round(float(p[0]))), int(round(float(p[1])))
