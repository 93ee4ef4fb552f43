"""Training augmentation with albumentations, scaled by one ``strength`` knob.

``strength`` 1 is a sensible fundus default; 0 switches every random transform off except
the flips; 2 doubles every range. Fundus photographs have no canonical orientation, so flips
and full rotations are safe. The same pipeline runs in every progressive-resizing phase:
training never silently drops to test-time preprocessing.
"""

from __future__ import annotations

from typing import Any

import albumentations as A
import cv2

from drsearch.config.recipe import AugmentConfig, Recipe


def train_pipeline(cfg: AugmentConfig) -> A.Compose | None:
    """The per-sample random pipeline, or ``None`` when nothing random is configured."""
    s = cfg.strength
    transforms: list[A.BasicTransform] = []
    if cfg.hflip:
        transforms.append(A.HorizontalFlip(p=0.5))
    if cfg.vflip:
        transforms.append(A.VerticalFlip(p=0.5))
    if s > 0:
        transforms += [
            A.Affine(
                rotate=(-180 * min(s, 1.0), 180 * min(s, 1.0)),
                scale=(1 - 0.1 * s, 1 + 0.1 * s),
                translate_percent=(-0.03 * s, 0.03 * s),
                interpolation=cv2.INTER_LINEAR,
                border_mode=cv2.BORDER_CONSTANT,
                p=0.8,
            ),
            A.RandomBrightnessContrast(brightness_limit=0.15 * s, contrast_limit=0.15 * s, p=0.7),
            A.HueSaturationValue(
                hue_shift_limit=int(round(5 * s)),
                sat_shift_limit=int(round(10 * s)),
                val_shift_limit=0,
                p=0.4,
            ),
            A.GaussianBlur(sigma_limit=(0.1, 0.6 * s + 0.1), p=0.2),
            A.CoarseDropout(
                num_holes_range=(1, max(1, int(round(3 * s)))),
                hole_height_range=(0.04, 0.04 + 0.06 * s),
                hole_width_range=(0.04, 0.04 + 0.06 * s),
                p=0.3 * min(s, 1.0),
            ),
        ]
    return A.Compose(transforms) if transforms else None


def describe(pipeline: A.Compose | None) -> list[str]:
    """Names of the transforms, for the run record (so an empty phase is visible)."""
    return [] if pipeline is None else [type(t).__name__ for t in pipeline.transforms]


def make_mixup(recipe: Recipe) -> Any:
    """timm's batch MixUp/CutMix from ``augment`` (``None`` when both alphas are 0); soft
    targets carry ``loss.label_smoothing``."""
    aug = recipe.augment
    if aug.mixup_alpha <= 0 and aug.cutmix_alpha <= 0:
        return None
    from timm.data import Mixup

    return Mixup(
        mixup_alpha=aug.mixup_alpha,
        cutmix_alpha=aug.cutmix_alpha,
        prob=aug.mix_prob,
        switch_prob=aug.switch_prob,
        mode="batch",
        label_smoothing=recipe.loss.label_smoothing,
        num_classes=5,
    )
