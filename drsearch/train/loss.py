"""Cross-entropy and focal loss on soft targets, with per-grade class weights.

For soft targets ``t`` (one-hot, label-smoothed or MixUp/CutMix-mixed), probabilities ``p``,
class weights ``w`` and focal alpha ``a`` (both all ones when unset), the loss of one sample
is::

    ce     sum_c  w_c * t_c * -log p_c
    focal  sum_c  a_c * w_c * t_c * (1 - p_c)**gamma * -log p_c

averaged over the batch. ``a_c`` is Lin et al.'s (2017) alpha_t, one per grade (a scalar
alpha is the same number for every grade: a constant scale). With one-hot targets only the
true grade's term remains: ``a_t w_t (1 - p_t)**gamma * -log p_t``, the paper's form. With
label smoothing each grade's share ``t_c`` of the target gets its own focal term, so the
smoothed mass on wrong grades is focal-weighted by how little probability they already have.
With ``gamma=0``, alpha 1 and no weights, focal equals cross-entropy exactly.
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
    """The 5 class weights the loss uses, from a list or a preset over the training labels."""
    return _per_grade(cfg.class_weights, train_labels)


def resolve_focal_alpha(cfg: LossConfig, train_labels: Sequence[int]) -> list[float]:
    """The 5 focal alpha_t the loss uses: a list, a preset, or one number for every grade."""
    if isinstance(cfg.alpha, int | float):
        return [float(cfg.alpha)] * NUM_CLASSES
    return _per_grade(cfg.alpha, train_labels) or [1.0] * NUM_CLASSES


def _per_grade(spec: str | list[float], train_labels: Sequence[int]) -> list[float] | None:
    """A list as given, or a preset over the training labels, normalised so that the average
    over the training images is 1: ``inverse`` gives ``w_c = N / (K * n_c)``;
    ``inverse_sqrt`` is proportional to ``n_c ** -0.5``. A grade absent from training gets
    the largest value of the others. ``none``: no weighting."""
    if isinstance(spec, list):
        return [float(w) for w in spec]
    if spec == "none":
        return None
    if len(train_labels) == 0:
        raise ValueError(f"the {spec!r} preset is computed from the training labels: pass them")
    counts = np.bincount(np.asarray(train_labels, dtype=int), minlength=NUM_CLASSES).astype(float)
    power = 1.0 if spec == "inverse" else 0.5
    raw = np.zeros(NUM_CLASSES)
    present = counts > 0
    raw[present] = counts[present] ** -power
    raw[~present] = raw[present].max() if present.any() else 1.0
    freq = counts / counts.sum()
    raw /= float((freq * raw).sum())
    return [float(w) for w in raw]


class SoftTargetLoss(nn.Module):
    """CE or focal loss over soft targets (see module docstring)."""

    def __init__(
        self,
        cfg: LossConfig,
        class_weights: Sequence[float] | None,
        alpha: Sequence[float] | None = None,
    ) -> None:
        super().__init__()
        self.focal = cfg.name == "focal"
        self.gamma = cfg.gamma
        weights = torch.ones(NUM_CLASSES)
        if class_weights is not None:
            weights = torch.tensor(list(class_weights), dtype=torch.float32)
        if self.focal:  # alpha_t and w_c multiply the same term: one vector on the hot path
            if alpha is None:  # a list or a number; a preset needs the training labels
                alpha = resolve_focal_alpha(cfg, [])
            weights = weights * torch.tensor(list(alpha), dtype=torch.float32)
        self.register_buffer("weights", weights)

    def forward(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        log_p = F.log_softmax(logits.float(), dim=1)
        terms = -log_p * targets * self.weights
        if self.focal:
            terms = (1 - log_p.exp()).pow(self.gamma) * terms
        return terms.sum(dim=1).mean()


def one_hot_smoothed(labels: torch.Tensor, smoothing: float) -> torch.Tensor:
    """One-hot targets with label smoothing as torch's cross_entropy defines it."""
    off = smoothing / NUM_CLASSES
    targets = torch.full((len(labels), NUM_CLASSES), off, device=labels.device)
    targets.scatter_(1, labels.view(-1, 1), 1.0 - smoothing + off)
    return targets
