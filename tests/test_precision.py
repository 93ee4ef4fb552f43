"""Mixed precision and compilation options of the trainer (the GPU path, tested on the CPU)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from drsearch.errors import ConfigError
from drsearch.train.model import autocast_dtype
from tests.conftest import make_recipe

CPU, GPU = torch.device("cpu"), torch.device("cuda")


@pytest.mark.parametrize(
    "amp,device,bf16_ok,expected",
    [
        (True, CPU, True, None),  # the CPU trains in fp32 unless bf16 is asked for
        ("bf16", CPU, True, torch.bfloat16),
        (False, CPU, True, None),
        (True, GPU, True, torch.bfloat16),  # a GPU with bf16: bf16, no scaler
        (True, GPU, False, torch.float16),  # an older GPU: fp16 (+ GradScaler)
        ("fp16", GPU, True, torch.float16),
        ("bf16", GPU, True, torch.bfloat16),
        (False, GPU, True, None),
    ],
)
def test_autocast_dtype_table(
    amp: bool | str,
    device: torch.device,
    bf16_ok: bool,
    expected: torch.dtype | None,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda: bf16_ok)
    assert autocast_dtype(amp, device) == expected


def test_fp16_on_the_cpu_is_refused_in_one_line() -> None:
    with pytest.raises(ConfigError, match="train.amp: fp16 needs a CUDA GPU"):
        autocast_dtype("fp16", CPU)


def test_bf16_autocast_trains_on_the_cpu(tmp_path: Path, tiny_dataset: Path) -> None:
    from drsearch.train import fit

    recipe = make_recipe(tiny_dataset, train__amp="bf16", train__epochs=2)
    result = fit(recipe, run_dir=tmp_path / "run")
    info = json.loads((tmp_path / "run" / "run.json").read_text())
    assert info["amp"] == "bfloat16" and result.epochs_completed == 2
    assert all(r["train"]["loss"] == r["train"]["loss"] for r in result.history)  # finite
    model = torch.load(tmp_path / "run" / "checkpoints" / "best.pt", weights_only=True)["model"]
    assert all(v.dtype == torch.float32 for v in model.values() if v.is_floating_point())
    # bf16 really ran: the same recipe in fp32 (bit-reproducible on the CPU) gives other losses
    fp32 = fit(recipe.model_copy(update={"train": recipe.train.model_copy(update={"amp": False})}),
               run_dir=tmp_path / "fp32")  # fmt: skip
    assert [r["train"]["loss"] for r in fp32.history] != [
        r["train"]["loss"] for r in result.history
    ]


def test_compile_wraps_the_training_forward_but_saves_plain_weights(
    tmp_path: Path, tiny_dataset: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from drsearch.train import fit

    compiled: list[torch.nn.Module] = []
    calls = {"n": 0}

    def fake_compile(model: torch.nn.Module) -> torch.nn.Module:  # torch.compile is slow on CPU
        compiled.append(model)

        def forward(x: torch.Tensor) -> torch.Tensor:
            calls["n"] += 1
            return model(x)

        return forward  # type: ignore[return-value]

    monkeypatch.setattr(torch, "compile", fake_compile)
    fit(make_recipe(tiny_dataset, train__compile=True, train__epochs=2), run_dir=tmp_path / "r")
    assert len(compiled) == 1 and calls["n"] == 2 * 3  # every training batch went through it
    saved = torch.load(tmp_path / "r" / "checkpoints" / "last.pt", weights_only=True)["model"]
    assert not any(k.startswith("_orig_mod") for k in saved)
