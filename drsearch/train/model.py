"""timm models with a backbone/head split, offline weights, and the two-group optimizer."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import timm
import torch
from torch import nn

from drsearch import NUM_CLASSES
from drsearch.config.recipe import ModelConfig, OptimConfig
from drsearch.errors import ConfigError


def build_model(cfg: ModelConfig) -> nn.Module:
    """A timm model with a 5-grade head; weights from a local file when configured."""
    if not timm.is_model(cfg.name):
        raise ConfigError(
            f"model.name: unknown timm model {cfg.name!r}; list them with "
            "python -c 'import timm; print(timm.list_models())'"
        )
    model = timm.create_model(
        cfg.name,
        pretrained=False,
        num_classes=NUM_CLASSES,
        drop_rate=cfg.drop_rate,
        drop_path_rate=cfg.drop_path_rate or None,
    )
    if cfg.pretrained is not False:
        from drsearch.train.named_weights import is_named, mapped_state_dict

        if is_named(cfg.pretrained):
            model.load_state_dict(
                mapped_state_dict(str(cfg.pretrained), model, cfg.name), strict=False
            )
        else:
            load_local_weights(model, Path(cfg.pretrained))
    return model


def load_local_weights(model: nn.Module, path: Path) -> dict[str, list[str]]:
    """Load a torch or safetensors state dict; only classifier keys may differ.

    Returns the missing and unexpected keys so a run can record them.
    """
    if not path.is_file():
        raise ConfigError(f"model.pretrained: weights file {path} not found")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        state = load_file(str(path))
    else:
        state = torch.load(path, map_location="cpu", weights_only=True)
        for key in ("state_dict", "model"):
            if isinstance(state, dict) and isinstance(state.get(key), dict):
                state = state[key]
    own = model.state_dict()
    head = set(head_parameter_names(model))
    reshaped = [k for k, v in state.items() if k in own and v.shape != own[k].shape]
    state = {k: v for k, v in state.items() if k not in reshaped}
    result = model.load_state_dict(state, strict=False)
    differing = [*reshaped, *result.missing_keys, *result.unexpected_keys]
    outside_head = [k for k in differing if k not in head]
    if outside_head:
        raise ConfigError(
            f"model.pretrained: {path} does not fit {type(model).__name__}: "
            f"{len(outside_head)} mismatched key(s) beyond the classifier, e.g. {outside_head[0]}"
        )
    return {"missing": list(result.missing_keys), "unexpected": list(result.unexpected_keys)}


def head_parameter_names(model: nn.Module) -> list[str]:
    """Names (as in ``state_dict``) of the classifier's tensors."""
    head = model.get_classifier() if hasattr(model, "get_classifier") else None
    if not isinstance(head, nn.Module):
        raise ConfigError(f"model.name: {type(model).__name__} has no classifier to fine-tune")
    ids = {id(p) for p in head.parameters()}
    return [n for n, p in model.named_parameters() if id(p) in ids]


def parameter_groups(model: nn.Module, cfg: OptimConfig) -> list[dict[str, Any]]:
    """Backbone and head groups; ``base_lr`` is each group's LR before the schedule."""
    head_names = set(head_parameter_names(model))
    head, backbone = [], []
    for name, param in model.named_parameters():
        if param.requires_grad:
            (head if name in head_names else backbone).append(param)
    lr = cfg.lr
    return [
        {"name": "backbone", "params": backbone, "base_lr": lr * cfg.backbone_lr_mult, "lr": lr},
        {"name": "head", "params": head, "base_lr": lr, "lr": lr},
    ]


def build_optimizer(model: nn.Module, cfg: OptimConfig) -> torch.optim.Optimizer:
    """AdamW, Adam or SGD (momentum, Nesterov) over the two parameter groups."""
    groups = parameter_groups(model, cfg)
    if cfg.name == "sgd":
        return torch.optim.SGD(
            groups,
            lr=cfg.lr,
            momentum=cfg.momentum,
            nesterov=cfg.momentum > 0,
            weight_decay=cfg.weight_decay,
        )
    opt_cls = torch.optim.AdamW if cfg.name == "adamw" else torch.optim.Adam
    return opt_cls(groups, lr=cfg.lr, weight_decay=cfg.weight_decay)


def normalization(model: nn.Module) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """The mean and std the model's pretrained config expects (ImageNet's by default)."""
    cfg = getattr(model, "pretrained_cfg", None) or {}
    mean = tuple(cfg.get("mean", (0.485, 0.456, 0.406)))
    std = tuple(cfg.get("std", (0.229, 0.224, 0.225)))
    return mean, std
