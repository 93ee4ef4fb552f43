"""timm models: backbone/head groups, offline weights from a local file."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from drsearch.config.recipe import ModelConfig, OptimConfig
from drsearch.errors import ConfigError
from drsearch.train.model import build_model, build_optimizer, head_parameter_names


def test_two_groups_with_backbone_multiplier() -> None:
    model = build_model(ModelConfig(name="resnet10t"))
    opt = build_optimizer(model, OptimConfig(name="sgd", lr=0.1, backbone_lr_mult=0.1))
    names = [g["name"] for g in opt.param_groups]
    assert names == ["backbone", "head"]
    assert [g["base_lr"] for g in opt.param_groups] == [pytest.approx(0.01), 0.1]
    assert head_parameter_names(model) == ["fc.weight", "fc.bias"]
    n_params = sum(len(g["params"]) for g in opt.param_groups)
    assert n_params == len(list(model.parameters()))


@pytest.mark.parametrize("suffix", [".pt", ".safetensors"])
def test_local_weights_load_and_head_may_differ(tmp_path: Path, suffix: str) -> None:
    source = build_model(ModelConfig(name="resnet10t"))
    state = {k: v for k, v in source.state_dict().items() if not k.startswith("fc.")}
    state["fc.weight"] = torch.zeros(1000, 512)  # an ImageNet head: shapes differ, skipped
    path = tmp_path / f"w{suffix}"
    if suffix == ".pt":
        torch.save({"state_dict": state}, path)
    else:
        save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    model = build_model(ModelConfig(name="resnet10t", pretrained=path))
    for key, value in source.state_dict().items():
        if not key.startswith("fc."):
            assert torch.equal(model.state_dict()[key], value), key


def test_weights_of_another_architecture_are_an_error(tmp_path: Path) -> None:
    path = tmp_path / "other.pt"
    torch.save(build_model(ModelConfig(name="mobilenetv3_small_050")).state_dict(), path)
    with pytest.raises(ConfigError, match="does not fit .* mismatched key"):
        build_model(ModelConfig(name="resnet10t", pretrained=path))


def test_unknown_model_and_missing_weights(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="model.name: unknown timm model 'resnet_nope'"):
        build_model(ModelConfig(name="resnet_nope"))
    with pytest.raises(ConfigError, match="model.pretrained: weights file .* not found"):
        build_model(ModelConfig(name="resnet10t", pretrained=tmp_path / "none.pt"))
