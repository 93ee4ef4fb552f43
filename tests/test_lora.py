"""LoRA fine-tuning (peft) and MedSigLIP's Hugging Face weights loaded into timm's SigLIP ViT."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml
from click.testing import CliRunner
from safetensors.torch import save_file

from drsearch.cli import cli
from drsearch.config.recipe import LoraConfig, ModelConfig
from drsearch.errors import ConfigError
from drsearch.train import fit
from drsearch.train.checkpoint import LAST
from drsearch.train.model import build_model, parameter_counts
from tests.conftest import make_recipe, tiny_recipe_dict

LORA = {"r": 4, "alpha": 8, "dropout": 0.0, "target_modules": "attention"}
SIGLIP = "vit_so400m_patch14_siglip_384"  # the architecture studies/medsiglip_lora.yaml uses


def test_only_adapters_and_head_train() -> None:
    model = build_model(ModelConfig(name="test_vit", lora=LoraConfig(**LORA)), image_size=32)
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n or n.startswith("head.") for n in trainable)
    assert {"head.weight", "head.bias"} <= set(trainable)
    adapted = {n.rsplit(".lora_", 1)[0] for n in trainable if "lora_" in n}
    assert adapted and all(n.endswith(("attn.qkv", "attn.proj")) for n in adapted)
    assert not any("patch_embed" in n or "mlp" in n for n in adapted)
    counts = parameter_counts(model)
    dim, depth = model.embed_dim, len(model.blocks)
    # per block: qkv (dim -> 3 dim) and proj (dim -> dim), each A (r x in) + B (out x r)
    lora = depth * 4 * (dim + 3 * dim + dim + dim)
    assert counts["lora"] == lora
    assert counts["trainable"] == lora + 5 * dim + 5
    assert counts["total"] > 10 * counts["trainable"]


def test_target_presets_and_lists() -> None:
    assert LoraConfig(target_modules="qkv").target_names() == ["attn.qkv"]
    assert LoraConfig(target_modules="attention_mlp").target_names() == [
        "attn.qkv",
        "attn.proj",
        "mlp.fc1",
        "mlp.fc2",
    ]
    assert LoraConfig(target_modules=["mlp.fc2"]).target_names() == ["mlp.fc2"]


def test_targets_the_model_lacks_are_a_one_line_error() -> None:
    with pytest.raises(ConfigError, match=r"model.lora.target_modules: no module .* attn.qkv"):
        build_model(ModelConfig(name="resnet10t", lora=LoraConfig(target_modules="qkv")))


@pytest.mark.e2e
def test_lora_run_freezes_the_backbone_and_reports_trainable_parameters(
    tmp_path: Path, tiny_dataset: Path
) -> None:
    recipe = make_recipe(
        tiny_dataset,
        model={"name": "test_vit", "lora": LORA},
        train__epochs=1,
        schedule__warmup_epochs=0,
        train__batch_size=8,
        train__grad_accum=2,
        optim__lr=1e-2,
    )
    torch.manual_seed(recipe.train.seed)  # fit seeds the same way before building the model
    initial = build_model(recipe.model, recipe.data.image_size).state_dict()
    result = fit(recipe, run_dir=tmp_path / "run")
    trained = torch.load(tmp_path / "run/checkpoints" / LAST, weights_only=False)["model"]
    assert trained.keys() == initial.keys()
    for key, before in initial.items():
        after = trained[key]
        if "lora_B" in key or key.startswith("head."):
            assert not torch.equal(before, after), f"{key} should have trained"
        elif "lora_" not in key:
            assert torch.equal(before, after), f"{key} is frozen but changed"
    info = json.loads((tmp_path / "run/run.json").read_text())["parameters"]
    assert info == result.parameters and 0 < info["lora"] < info["trainable"] < info["total"]
    first_epoch = json.loads((tmp_path / "run/metrics.jsonl").read_text().splitlines()[0])
    assert first_epoch["trainable_params"] == info["trainable"]


@pytest.mark.e2e
def test_train_command_prints_the_trainable_parameters(tmp_path: Path, tiny_dataset: Path) -> None:
    raw = tiny_recipe_dict(
        tiny_dataset, **{"model.name": "test_vit", "train.epochs": 1, "schedule.warmup_epochs": 0}
    )
    raw["model"]["lora"] = LORA
    (tmp_path / "r.yaml").write_text(yaml.safe_dump(raw))
    out = CliRunner().invoke(
        cli, ["train", str(tmp_path / "r.yaml"), "--quiet", "--out", str(tmp_path / "run")]
    )
    assert out.exit_code == 0, out.output
    counts = json.loads((tmp_path / "run/run.json").read_text())["parameters"]
    assert f"trainable parameters: {counts['trainable']:,} of {counts['total']:,}" in out.output
    assert f"LoRA adapters {counts['lora']:,}" in out.output


# -- MedSigLIP (Hugging Face SigLIP layout) -> timm ---------------------------------------
def _hf_siglip(tmp_path: Path) -> tuple[torch.nn.Module, Path]:
    """A tiny transformers SigLIP vision tower saved like MedSigLIP's model.safetensors."""
    transformers = pytest.importorskip("transformers")
    config = transformers.SiglipVisionConfig(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        image_size=32,
        patch_size=8,
    )
    torch.manual_seed(0)
    hf = transformers.SiglipVisionModel(config).eval()
    state = {f"vision_model.{k}": v.contiguous() for k, v in hf.state_dict().items()}
    state["text_model.embeddings.token_embedding.weight"] = torch.zeros(10, 32)  # dropped
    state["logit_scale"] = torch.zeros(1)
    path = tmp_path / "model.safetensors"
    save_file(state, str(path))
    return hf, path


ROOT = Path(__file__).resolve().parents[1]
# the shipped recipe's model arguments, with the dimensions of the tiny tower above
TINY_SIGLIP = {
    **yaml.safe_load((ROOT / "recipes/medsiglip_lora.yaml").read_text())["model"]["kwargs"],
    "embed_dim": 32,
    "depth": 2,
    "num_heads": 4,
    "mlp_ratio": 2.0,
    "patch_size": 8,
}


def test_hf_siglip_weights_give_the_same_features_in_timm(tmp_path: Path) -> None:
    hf, path = _hf_siglip(tmp_path)
    cfg = ModelConfig(name=SIGLIP, pretrained=path, kwargs=TINY_SIGLIP)
    model = build_model(cfg, image_size=32).eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        expected = hf(pixel_values=x).pooler_output
        got = model.forward_head(model.forward_features(x), pre_logits=True)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-4)


def test_hf_siglip_position_table_is_resampled_for_another_size(tmp_path: Path) -> None:
    _, path = _hf_siglip(tmp_path)
    cfg = ModelConfig(name=SIGLIP, pretrained=path, kwargs=TINY_SIGLIP)
    model = build_model(cfg, image_size=48)  # 6 x 6 patches instead of 4 x 4
    assert model.pos_embed.shape == (1, 36, 32)
    assert model(torch.randn(1, 3, 48, 48)).shape == (1, 5)


def test_lora_goes_on_after_the_pretrained_weights(tmp_path: Path) -> None:
    hf, path = _hf_siglip(tmp_path)
    cfg = ModelConfig(name=SIGLIP, pretrained=path, kwargs=TINY_SIGLIP, lora=LoraConfig(**LORA))
    model = build_model(cfg, image_size=32).eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():  # LoRA's B starts at zero: the adapted model equals the original
        got = model.forward_head(model.forward_features(x), pre_logits=True)
        expected = hf(pixel_values=x).pooler_output
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-4)
    frozen = model.blocks[0].attn.qkv.base_layer.weight
    assert not frozen.requires_grad
    torch.testing.assert_close(
        frozen,
        torch.cat([hf.state_dict()[f"encoder.layers.0.self_attn.{p}_proj.weight"] for p in "qkv"]),
    )


def test_model_kwargs_a_model_does_not_take_are_a_one_line_error() -> None:
    with pytest.raises(
        ConfigError, match=r"model.kwargs: timm's resnet10t does not take \['embed_dim'\]"
    ):
        build_model(ModelConfig(name="resnet10t", kwargs={"embed_dim": 8}))
