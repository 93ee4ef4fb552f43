"""timm models with a backbone/head split, offline weights, and the two-group optimizer."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import timm
import torch
from torch import nn

from drsearch.config.recipe import ModelConfig, OptimConfig
from drsearch.errors import ConfigError
from drsearch.train.heads import OUTPUTS
from drsearch.train.hf_siglip import convert_hf_siglip, is_hf_siglip


def build_model(
    cfg: ModelConfig, image_size: int | None = None, dynamic_size: bool = False
) -> nn.Module:
    """A timm model with a 5-grade head; weights from a local file when configured.

    Models with a fixed input size (ViTs) are built for ``image_size``, and for any size
    when ``dynamic_size`` (progressive resizing). With ``cfg.lora``, adapters are added after
    the weights load and everything but adapters and classifier is frozen.
    """
    if not timm.is_model(cfg.name):
        raise ConfigError(
            f"model.name: unknown timm model {cfg.name!r}; list them with "
            "python -c 'import timm; print(timm.list_models())'"
        )
    try:
        model = timm.create_model(
            cfg.name,
            pretrained=False,
            num_classes=OUTPUTS[cfg.head],
            drop_rate=cfg.drop_rate,
            drop_path_rate=cfg.drop_path_rate or None,
            **_input_size_kwargs(cfg.name, image_size, dynamic_size),
            **cfg.kwargs,
        )
    except TypeError as exc:
        if not cfg.kwargs:
            raise
        raise ConfigError(
            f"model.kwargs: timm's {cfg.name} does not take {sorted(cfg.kwargs)}: {exc}"
        ) from None
    if cfg.pretrained is not False:
        from drsearch.train.named_weights import is_named, mapped_state_dict

        if is_named(cfg.pretrained):
            model.load_state_dict(
                mapped_state_dict(str(cfg.pretrained), model, cfg.name), strict=False
            )
        else:
            load_local_weights(model, Path(cfg.pretrained))
    if cfg.lora is not None:
        from drsearch.train.lora import apply_lora

        model = apply_lora(model, cfg.lora, head_parameter_names(model))
    return model


def _input_size_kwargs(name: str, image_size: int | None, dynamic: bool) -> dict[str, Any]:
    try:
        pretrained_cfg = timm.models.get_pretrained_cfg(name)
    except (RuntimeError, KeyError):  # a model registered without pretrained configs
        pretrained_cfg = None
    if image_size is None or not (pretrained_cfg and pretrained_cfg.fixed_input_size):
        return {}
    return (
        {"img_size": image_size, "dynamic_img_size": True} if dynamic else {"img_size": image_size}
    )


def parameter_counts(model: nn.Module) -> dict[str, Any]:
    """How many parameters the model has and how many train (adapters and head under LoRA)."""
    total = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return {
        "total": total,
        "trainable": trainable,
        "trainable_fraction": trainable / total if total else 0.0,
        "lora": sum(p.numel() for n, p in model.named_parameters() if "lora_" in n),
    }


def load_local_weights(model: nn.Module, path: Path) -> dict[str, list[str]]:
    """Load a torch or safetensors state dict; only classifier keys may differ.

    Returns the missing and unexpected keys so a run can record them.
    """
    if not path.is_file():
        raise ConfigError(f"model.pretrained: weights file {path} not found")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            state = load_file(str(path))
        except Exception as exc:  # noqa: BLE001 - safetensors raises its own error types
            raise ConfigError(
                f"model.pretrained: {path} is not a readable safetensors file ({exc})"
            ) from None
    else:
        from drsearch.train.checkpoint import load_weights_only

        state = load_weights_only(
            path,
            f"model.pretrained: {path}",
            "save a plain state dict (or safetensors)",
            ConfigError,
        )
        for key in ("state_dict", "model"):
            if isinstance(state, dict) and isinstance(state.get(key), dict):
                state = state[key]
    if is_hf_siglip(state):
        state = convert_hf_siglip(state)
    own = model.state_dict()
    if (
        "pos_embed" in state
        and "pos_embed" in own
        and state["pos_embed"].shape != own["pos_embed"].shape
    ):
        state["pos_embed"] = _resample_pos_embed(state["pos_embed"], model)
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


def _resample_pos_embed(pos: torch.Tensor, model: nn.Module) -> torch.Tensor:
    """A ViT position embedding ``(1, prefix + H*W, D)`` resampled to ``model``'s patch grid."""
    from timm.layers import resample_abs_pos_embed

    prefix = 0 if getattr(model, "no_embed_class", False) else model.num_prefix_tokens
    side = math.isqrt(pos.shape[1] - prefix)
    return resample_abs_pos_embed(
        pos,
        new_size=list(model.patch_embed.grid_size),
        old_size=[side, side],
        num_prefix_tokens=prefix,
    )


def head_parameter_names(model: nn.Module) -> list[str]:
    """Names (as in ``state_dict``) of the classifier's tensors."""
    head = model.get_classifier() if hasattr(model, "get_classifier") else None
    if not isinstance(head, nn.Module):
        raise ConfigError(f"model.name: {type(model).__name__} has no classifier to fine-tune")
    ids = {id(p) for p in head.parameters()}
    return [n for n, p in model.named_parameters() if id(p) in ids]


def parameter_groups(model: nn.Module, cfg: OptimConfig) -> list[dict[str, Any]]:
    """Backbone and head groups; ``base_lr`` is each group's LR before the schedule.

    Unless ``cfg.decay_norm_and_bias``, each role is split as timm's
    ``param_groups_weight_decay`` does: biases, 1-d tensors (normalisation weights) and the
    model's ``no_weight_decay()`` names go to a part of the same name with weight decay 0.
    Both parts of a role share its LR (logged once under the role's name).
    """
    head_names = set(head_parameter_names(model))
    skip = set(model.no_weight_decay()) if hasattr(model, "no_weight_decay") else set()
    parts: dict[tuple[str, bool], list[nn.Parameter]] = {
        (role, decay): [] for role in ("backbone", "head") for decay in (True, False)
    }
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        role = "head" if name in head_names else "backbone"
        undecayed = param.ndim <= 1 or name.endswith(".bias") or name in skip
        parts[(role, cfg.decay_norm_and_bias or not undecayed)].append(param)
    lr = cfg.lr
    base = {"backbone": lr * cfg.backbone_lr_mult, "head": lr}
    groups = []
    for (role, decay), params in parts.items():
        if params or decay:  # the decayed part always, so every role has a group
            group = {"name": role, "params": params, "base_lr": base[role], "lr": lr}
            groups.append(group if decay else group | {"weight_decay": 0.0})
    return groups


def build_optimizer(model: nn.Module, cfg: OptimConfig) -> torch.optim.Optimizer:
    """AdamW, Adam or SGD (momentum, Nesterov) over the two parameter groups, in torch's fused
    implementation where it applies (one kernel per step instead of a loop over tensors:
    resnet10t's AdamW step 5.7 ms instead of 9.9 ms on 2 CPU cores, bench/README.md)."""
    groups = parameter_groups(model, cfg)
    if cfg.name == "sgd":
        kwargs: dict[str, Any] = {"momentum": cfg.momentum, "nesterov": cfg.momentum > 0}
        opt_cls: type[torch.optim.Optimizer] = torch.optim.SGD
    else:
        kwargs = {}
        opt_cls = torch.optim.AdamW if cfg.name == "adamw" else torch.optim.Adam
    kwargs |= {"lr": cfg.lr, "weight_decay": cfg.weight_decay}
    params = [p for g in groups for p in g["params"]]
    if params and all(p.is_floating_point() and p.device.type in ("cpu", "cuda") for p in params):
        try:
            return opt_cls(groups, fused=True, **kwargs)  # type: ignore[call-arg]
        except (RuntimeError, TypeError):  # a torch build or dtype without the fused kernel
            pass
    return opt_cls(groups, **kwargs)


def normalization(model: nn.Module) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """The mean and std the model's pretrained config expects (ImageNet's by default)."""
    cfg = getattr(model, "pretrained_cfg", None) or {}
    mean = tuple(cfg.get("mean", (0.485, 0.456, 0.406)))
    std = tuple(cfg.get("std", (0.229, 0.224, 0.225)))
    return mean, std


def autocast_dtype(amp: bool | str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype of ``train.amp`` on ``device`` (``None``: full fp32). ``True`` is
    bf16 on a GPU that supports it, else fp16, and fp32 on the CPU (where bf16 pays only with
    matrix units: an explicit ``"bf16"``)."""
    if amp is False:
        return None
    if amp == "bf16":
        return torch.bfloat16
    if device.type != "cuda":
        if amp == "fp16":
            raise ConfigError("train.amp: fp16 needs a CUDA GPU; use bf16 on the CPU, or false")
        return None
    if amp == "fp16" or not torch.cuda.is_bf16_supported():
        return torch.float16
    return torch.bfloat16


def make_ema(model: nn.Module, decay: float, warmup: bool = True) -> Any:
    """timm's ``ModelEmaV3`` of ``model``: the weights evaluated when ``train.ema`` is on.

    With ``warmup`` the decay at optimizer step ``k`` is ``min(decay, 1 - k**(-2/3))``
    (timm's default warmup power), so the average starts from the trained weights rather
    than lingering at the initial ones."""
    from timm.utils import ModelEmaV3

    return ModelEmaV3(model, decay=decay, use_warmup=warmup)
