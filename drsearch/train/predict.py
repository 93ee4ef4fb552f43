"""A trained model's raw outputs on a split, optionally averaged over flipped views (TTA).

Used to evaluate best-epoch weights after a search (``drsearch evaluate``); the trainer's own
validation pass is the same loop without flips.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from drsearch.config.recipe import Recipe
from drsearch.train.batches import Normalizer, Split, eval_batches
from drsearch.train.model import build_model, normalization


@dataclass
class TrainedModel:
    """A trained model to evaluate: its recipe, weights and what it was trained with."""

    label: str  # "trial 7", or the weights file
    recipe: Recipe
    state_dict: dict[str, Any]
    fingerprint: dict[str, Any]  # the data fingerprint of its run
    trial: int | None = None
    log: list[dict[str, Any]] = field(default_factory=list)  # its validation epochs
    #: a pinned recipe's earlier evaluation (thresholds, temperature): used, never refitted
    stored: dict[str, Any] | None = None


#: Views a test-time augmentation may average: the image as is, mirrored left-right (a left eye
#: looks like a right one) and upside down.
VIEWS = ("identity", "hflip", "vflip")


def trained_model(recipe: Recipe, state_dict: Mapping[str, Any]) -> torch.nn.Module:
    """The recipe's model (built without its pretrained file) holding ``state_dict``."""
    cfg = recipe.model.model_copy(update={"pretrained": False})
    model = build_model(cfg, recipe.data.image_size, len(recipe.data.sizes()) > 1)
    model.load_state_dict(dict(state_dict))
    return model.eval()


@torch.no_grad()
def predict(
    model: torch.nn.Module,
    split: Split,
    batch_size: int,
    views: Sequence[str] = ("identity",),
    device: str | torch.device = "cpu",
) -> np.ndarray:
    """Raw outputs (N x the head's outputs) on ``split``: the mean over ``views``."""
    unknown = sorted(set(views) - set(VIEWS))
    if unknown or not views:
        raise ValueError(f"views must be some of {VIEWS}, got {list(views)}")
    device = torch.device(device)
    model = model.to(device).eval()
    normalize = Normalizer(*normalization(model), device)
    outputs = []
    for images, _ in eval_batches(split, batch_size, 0):
        x = normalize(images)  # B x 3 x H x W: width is dim 3, height dim 2
        seen = [x.flip(3) if v == "hflip" else x.flip(2) if v == "vflip" else x for v in views]
        outputs.append(torch.stack([model(s).float() for s in seen]).mean(0).cpu().numpy())
    return np.concatenate(outputs).astype(np.float64)
