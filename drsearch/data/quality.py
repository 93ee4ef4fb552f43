"""Images a grader should not grade: the flags ``drsearch predict`` writes instead of a grade.

A fundus photograph is a bright, round field of view on a dark border. The check thresholds
the image's grey level at the recipe's ``data.preprocess.border_threshold`` (the level
``crop_border`` crops to), on a copy at most ``CHECK_SIDE`` pixels a side (each of its pixels
the mean of 4 x 4 pixels of a sample of the image's, or of the image itself when small):

- ``no_fundus``: under ``NO_FUNDUS_SHARE`` of the frame is brighter than the threshold (a
  black or nearly black image); or fewer than ``MIN_DARK_CORNERS`` of the frame's four corners
  are dark (no dark border around a field of view: a blank or noise image, a photograph of
  something else, or a fundus cropped inside its field of view); or the bright part is one
  flat level (grey-level spread under ``FLAT_STD`` inside it: a blank disc).
- ``small_fundus``: the bright part covers under ``SMALL_FUNDUS_SHARE`` of the frame.
- ``size_out_of_range``: the shorter side is under half the model's input size (the model
  would see it enlarged more than twice), or the longer side is over ``MAX_ASPECT`` times the
  shorter (fundus cameras write 1:1 to 16:9 frames).
"""

from __future__ import annotations

import cv2
import numpy as np

CHECK_SIDE = 64
NO_FUNDUS_SHARE = 0.005
SMALL_FUNDUS_SHARE = 0.10
MIN_DARK_CORNERS = 2
FLAT_STD = 3.0
MAX_ASPECT = 2.0
#: Every flag, with what it means (the README says the same).
FLAGS = {
    "no_fundus": "no fundus found: black, blank, noise, or no dark border around a field of view",
    "small_fundus": "the bright part of the image is under 10% of the frame",
    "size_out_of_range": "smaller than half the model's input, or longer than twice its width",
}


def image_flags(img: np.ndarray, border_threshold: int, model_size: int) -> tuple[str, ...]:
    """The flags of one decoded RGB image (empty: grade it)."""
    flags = []
    h, w = img.shape[:2]
    if 2 * min(h, w) < model_size or max(h, w) > MAX_ASPECT * min(h, w):
        flags.append("size_out_of_range")
    small = _shrink(img, 4 * CHECK_SIDE, cv2.INTER_NEAREST)  # a sample of pixels, then
    small = _shrink(small, CHECK_SIDE, cv2.INTER_AREA)  # means of 4 x 4 of them
    grey = cv2.cvtColor(small, cv2.COLOR_RGB2GRAY)
    bright = grey > border_threshold
    share = float(bright.mean())
    if share < NO_FUNDUS_SHARE:
        flags.append("no_fundus")
    elif share < SMALL_FUNDUS_SHARE:
        flags.append("small_fundus")
    elif dark_corners(grey, border_threshold) < MIN_DARK_CORNERS or _flat(grey, bright):
        flags.append("no_fundus")
    return tuple(flags)


def _shrink(img: np.ndarray, side: int, interpolation: int) -> np.ndarray:
    h, w = img.shape[:2]
    if max(h, w) <= side:
        return img
    scale = side / max(h, w)
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    return cv2.resize(img, size, interpolation=interpolation)


def dark_corners(grey: np.ndarray, threshold: int) -> int:
    """How many of the four corner squares (a tenth of the shorter side) are dark: at least
    half their pixels at or under ``threshold`` (a few bright ones, such as a camera's text,
    do not count)."""
    k = max(1, min(grey.shape) // 10)
    corners = (grey[:k, :k], grey[:k, -k:], grey[-k:, :k], grey[-k:, -k:])
    return sum(int((c <= threshold).mean() >= 0.5) for c in corners)


def _flat(grey: np.ndarray, bright: np.ndarray) -> bool:
    """The bright part's inside (its rim, mixed with the border, left out) is one level."""
    inside = cv2.erode(bright.astype(np.uint8), np.ones((3, 3), np.uint8)).astype(bool)
    values = grey[inside] if inside.any() else grey[bright]
    return float(values.std()) < FLAT_STD
