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
    cfg = OptimConfig(name="sgd", lr=0.1, backbone_lr_mult=0.1, decay_norm_and_bias=True)
    opt = build_optimizer(model, cfg)
    names = [g["name"] for g in opt.param_groups]
    assert names == ["backbone", "head"]
    assert [g["base_lr"] for g in opt.param_groups] == [pytest.approx(0.01), 0.1]
    assert head_parameter_names(model) == ["fc.weight", "fc.bias"]
    n_params = sum(len(g["params"]) for g in opt.param_groups)
    assert n_params == len(list(model.parameters()))


def test_no_weight_decay_on_biases_and_norms_as_timm_does() -> None:
    from timm.optim import param_groups_weight_decay

    model = build_model(ModelConfig(name="resnet10t"))
    opt = build_optimizer(model, OptimConfig(lr=0.1, weight_decay=0.05, backbone_lr_mult=0.1))
    groups = [(g["name"], g["weight_decay"], g["base_lr"]) for g in opt.param_groups]
    assert groups == [
        ("backbone", 0.05, pytest.approx(0.01)),
        ("backbone", 0.0, pytest.approx(0.01)),
        ("head", 0.05, 0.1),
        ("head", 0.0, 0.1),
    ]
    undecayed = {id(p) for g in opt.param_groups if g["weight_decay"] == 0 for p in g["params"]}
    reference = param_groups_weight_decay(model, weight_decay=0.05)  # timm's own split
    assert undecayed == {id(p) for p in reference[0]["params"]}
    assert reference[0]["weight_decay"] == 0.0 and len(undecayed) > 10
    # behaviour: with no gradient, AdamW shrinks a conv weight but leaves a BN weight alone
    conv, bn = model.conv1[0].weight, model.bn1.weight
    before = conv.detach().clone(), bn.detach().clone()
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    opt.step()
    # (the optimizer starts every group at optim.lr; the schedule sets base_lr * factor)
    assert torch.allclose(conv, before[0] * (1 - 0.1 * 0.05)) and torch.equal(bn, before[1])


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


def test_ema_warmup_follows_training_where_a_plain_high_decay_lingers_at_the_start() -> None:
    from drsearch.config.recipe import TrainConfig
    from drsearch.train.model import make_ema

    assert TrainConfig().ema_warmup  # on unless a recipe turns it off
    torch.manual_seed(0)
    model = torch.nn.Linear(8, 2)
    warm, plain = make_ema(model, 0.999, True), make_ema(model, 0.999, False)
    start = [p.detach().clone() for p in model.parameters()]
    for step in range(1, 41):  # 40 optimizer steps drifting the weights steadily
        with torch.no_grad():
            for p in model.parameters():
                p.add_(0.05)
        warm.update(model, step=step)
        plain.update(model, step=step)

    def gap(ema: object) -> float:
        pairs = zip(ema.module.parameters(), model.parameters(), strict=True)  # type: ignore[attr-defined]
        return max(float((e.detach() - m.detach()).abs().max()) for e, m in pairs)

    moved = max(
        float((m.detach() - s).abs().max()) for m, s in zip(model.parameters(), start, strict=True)
    )
    assert moved == pytest.approx(2.0)
    assert gap(plain) > 0.95 * moved  # decay 0.999 from step 1: still near the random init
    assert gap(warm) < 0.5 * moved  # the warmed-up decay tracks the trained weights
    assert warm.get_decay(11) == pytest.approx(1 - 11 ** (-2 / 3))  # timm's warmup at step 11


@pytest.mark.parametrize("name", ["adamw", "adam", "sgd"])
def test_optimizer_is_fused_and_steps_like_the_reference_loop(name: str) -> None:
    import copy

    import torch

    cfg = OptimConfig(name=name, lr=0.01, weight_decay=0.05, momentum=0.9)
    model = build_model(ModelConfig(name="resnet10t"))
    twin = copy.deepcopy(model)
    fused = build_optimizer(model, cfg)
    assert all(g.get("fused") for g in fused.param_groups)
    twins = dict(twin.named_parameters())
    groups = []
    for g, names in zip(fused.param_groups, _names(model, fused), strict=True):
        plain = {k: v for k, v in g.items() if k not in ("fused", "foreach", "params")}
        groups.append(plain | {"params": [twins[n] for n in names]})
    reference = type(fused)(groups, foreach=False)  # torch's plain for-loop implementation
    x = torch.randn(4, 3, 32, 32)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    for net, opt in ((model, fused), (twin, reference)):  # one step: later ones would only
        opt.zero_grad()  # amplify float rounding through the network
        net(x).square().mean().backward()
        opt.step()
    assert not torch.equal(before["conv1.0.weight"], model.state_dict()["conv1.0.weight"])
    for (k, a), b in zip(model.state_dict().items(), twin.state_dict().values(), strict=True):
        assert torch.allclose(a, b, atol=1e-6), (k, (a - b).abs().max())


def _names(model, opt):  # type: ignore[no-untyped-def]
    ids = {id(p): n for n, p in model.named_parameters()}
    return [[ids[id(p)] for p in g["params"]] for g in opt.param_groups]
