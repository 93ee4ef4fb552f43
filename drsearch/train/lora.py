"""LoRA fine-tuning through peft: adapters on a frozen backbone, the classifier trains.

The adapters are injected into the timm model itself (``peft.inject_adapter_in_model``), so
the model keeps its timm interface (``get_classifier``, ``pretrained_cfg``) and the trainer,
optimizer groups, EMA and checkpoints treat it like any other model. peft is imported only
when a recipe asks for LoRA.
"""

from __future__ import annotations

from torch import nn

from drsearch.config.recipe import LoraConfig
from drsearch.errors import ConfigError

INSTALL_HINT = "LoRA needs peft; install it with pip install 'drsearch[lora]' (or pip install peft)"


def apply_lora(model: nn.Module, cfg: LoraConfig, head_names: list[str]) -> nn.Module:
    """Inject adapters at ``cfg``'s target modules; freeze all but adapters and the head."""
    try:
        from peft import LoraConfig as PeftLoraConfig
        from peft import inject_adapter_in_model
    except ImportError:
        raise ConfigError(f"model.lora: {INSTALL_HINT}") from None
    targets = cfg.target_names()
    _check_targets(model, targets)
    peft_cfg = PeftLoraConfig(
        r=cfg.r, lora_alpha=cfg.alpha, lora_dropout=cfg.dropout, target_modules=targets
    )
    model = inject_adapter_in_model(peft_cfg, model)
    head = set(head_names)
    for name, param in model.named_parameters():
        param.requires_grad = "lora_" in name or name in head
    return model


def _check_targets(model: nn.Module, targets: list[str]) -> None:
    names = [name for name, _ in model.named_modules()]
    missing = [t for t in targets if not any(n == t or n.endswith(f".{t}") for n in names)]
    if missing:
        linear = sorted(
            {
                ".".join(n.split(".")[-2:])
                for n, m in model.named_modules()
                if isinstance(m, nn.Linear)
            }
        )
        raise ConfigError(
            f"model.lora.target_modules: no module of {type(model).__name__} ends with "
            f"{', '.join(missing)}; its linear layers include {', '.join(linear[:8]) or 'none'}"
        )
