"""Cross-entropy and focal loss on soft targets, with per-grade class weights.

For soft targets ``t`` (one-hot, label-smoothed or MixUp/CutMix-mixed), probabilities ``p``
and class weights ``w`` (all ones when unset), the loss of one sample is::

    ce     sum_c  w_c * t_c * -log p_c
    focal  sum_c  alpha * w_c * t_c * (1 - p_c)**gamma * -log p_c

averaged over the batch. ``alpha`` is a scalar scale (the seeds' alpha=4, gamma=6). With
``gamma=0, alpha=1`` and no weights, focal equals cross-entropy exactly.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from drsearch import NUM_CLASSES
from drsearch.config.recipe import LossConfig


def resolve_class_weights(cfg: LossConfig, train_labels: Sequence[int]) -> list[float] | None:
    """The 5 class weights the loss uses, from a list or a preset over the training labels.

    Presets are normalised so that the average weight over the training images is 1:
    ``inverse`` gives ``w_c = N / (K * n_c)``; ``inverse_sqrt`` is proportional to
    ``n_c ** -0.5``. A grade absent from training gets the largest weight of the others.
    """
    if isinstance(cfg.class_weights, list):
        return [float(w) for w in cfg.class_weights]
    if cfg.class_weights == "none":
        return None
    counts = np.bincount(np.asarray(train_labels, dtype=int), minlength=NUM_CLASSES).astype(float)
    power = 1.0 if cfg.class_weights == "inverse" else 0.5
    raw = np.zeros(NUM_CLASSES)
    present = counts > 0
    raw[present] = counts[present] ** -power
    raw[~present] = raw[present].max() if present.any() else 1.0
    freq = counts / counts.sum()
    raw /= float((freq * raw).sum())
    return [float(w) for w in raw]


class SoftTargetLoss(nn.Module):
    """CE or focal loss over soft targets (see module docstring)."""

    def __init__(self, cfg: LossConfig, class_weights: Sequence[float] | None) -> None:
        super().__init__()
        self.focal = cfg.name == "focal"
        self.alpha = cfg.alpha
        self.gamma = cfg.gamma
        weights = (
            torch.ones(NUM_CLASSES)
            if class_weights is None
            else torch.tensor(list(class_weights), dtype=torch.float32)
        )
        self.register_buffer("weights", weights)

    def forward(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        log_p = F.log_softmax(logits.float(), dim=1)
        terms = -log_p * targets * self.weights
        if self.focal:
            terms = self.alpha * (1 - log_p.exp()).pow(self.gamma) * terms
        return terms.sum(dim=1).mean()


def one_hot_smoothed(labels: torch.Tensor, smoothing: float) -> torch.Tensor:
    """One-hot targets with label smoothing as torch's cross_entropy defines it."""
    off = smoothing / NUM_CLASSES
    targets = torch.full((len(labels), NUM_CLASSES), off, device=labels.device)
    targets.scatter_(1, labels.view(-1, 1), 1.0 - smoothing + off)
    return targets
