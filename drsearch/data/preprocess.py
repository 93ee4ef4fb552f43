"""Deterministic fundus preprocessing, run once per image and cached (``data.preprocess``).

- ``crop_border``: crop to the bounding box of pixels whose grey level exceeds
  ``border_threshold`` (removes the black frame around the field of view).
- ``keep_aspect`` (default on): pad to a centred square with black before resizing, so the
  fundus of a non-square photograph stays round (always on after ``crop_border``).
- ``ben_graham``: Ben Graham's local colour normalisation (Kaggle DR 2015 winner):
  ``4 * img - 4 * GaussianBlur(img, sigma) + 128`` with ``sigma = ben_graham_sigma * r``,
  ``r`` the fundus radius in pixels at the output size, so it means the same at any size.
- ``circular_mask``: set everything outside the inscribed circle to black (after Ben Graham,
  whose output is mid-grey off the fundus).

Order: crop, pad to a square, resize to the training size, Ben Graham, mask. Random
augmentation is not here.
"""

from __future__ import annotations

import cv2
import numpy as np

from drsearch.config.recipe import PreprocessConfig


def crop_border(img: np.ndarray, threshold: int) -> np.ndarray:
    """The image cropped to the pixels brighter than ``threshold`` (unchanged if none)."""
    grey = cv2.cvtColor(img, cv2.COLOR_RGB2GRAY)
    rows = np.flatnonzero((grey > threshold).any(axis=1))
    cols = np.flatnonzero((grey > threshold).any(axis=0))
    if len(rows) == 0 or len(cols) == 0:
        return img
    return img[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1]


def square_pad(img: np.ndarray) -> np.ndarray:
    """Pad with black to a square, centred, so resizing keeps the fundus round."""
    h, w = img.shape[:2]
    side = max(h, w)
    out = np.zeros((side, side, 3), dtype=img.dtype)
    top, left = (side - h) // 2, (side - w) // 2
    out[top : top + h, left : left + w] = img
    return out


def ben_graham(img: np.ndarray, sigma_fraction: float) -> np.ndarray:
    """``4*img - 4*blur(img) + 128`` with the blur's sigma relative to the fundus radius."""
    radius = img.shape[1] / 2
    sigma = max(0.5, sigma_fraction * radius)
    blurred = cv2.GaussianBlur(img, (0, 0), sigmaX=sigma)
    return cv2.addWeighted(img, 4.0, blurred, -4.0, 128)


def circular_mask(img: np.ndarray, margin: float = 0.0) -> np.ndarray:
    """Black outside the inscribed circle (shrunk by ``margin`` of the radius)."""
    h, w = img.shape[:2]
    mask = np.zeros((h, w), dtype=np.uint8)
    cv2.circle(mask, (w // 2, h // 2), int(min(h, w) / 2 * (1 - margin)), 1, -1)
    return img * mask[..., None]


def preprocess(img: np.ndarray, cfg: PreprocessConfig, size: int) -> np.ndarray:
    """The deterministic pipeline for one decoded RGB image at one output size."""
    if cfg.crop_border:
        img = crop_border(img, cfg.border_threshold)
    if cfg.crop_border or cfg.keep_aspect:
        img = square_pad(img)
    img = cv2.resize(img, (size, size), interpolation=cv2.INTER_AREA)
    if cfg.ben_graham:
        img = ben_graham(img, cfg.ben_graham_sigma)
    if cfg.circular_mask:
        img = circular_mask(img, margin=0.02 if cfg.ben_graham else 0.0)
    return img
