"""Trainer throughput against the model's pure forward+backward speed on in-memory tensors.

    python bench/train_speed.py [--model resnet10t] [--size 64] [--batch 16] [--n 640]
                                [--amp bf16]

"pure" is the ceiling: random tensors already in memory, forward, loss, backward and an
AdamW step (torch's fused implementation, as the trainer uses), nothing else. "drsearch" is
the training phase of ``fit`` on a synthetic APTOS-layout dataset (decode once, augment per
epoch, MixUp off), epochs after the first. The brief's targets: >= 0.9x on resnet10t at
64 px; >= 0.94x (timm train.py) on efficientnet_b0 at 128 px. ``--amp bf16`` trains (and
measures the pure loop) under bf16 autocast, as ``train.amp: bf16`` does on the CPU. Prints
figures; asserts nothing.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import timm
import torch
import torch.nn.functional as F

from drsearch.config import Recipe, parse_config
from drsearch.data.synth import write_synthetic_dataset
from drsearch.train import fit


def pure_speed(
    model_name: str, size: int, batch: int, steps: int, channels_last: bool, bf16: bool = False
) -> float:
    """Images/s of forward+backward+AdamW on random in-memory tensors."""
    torch.manual_seed(0)
    layout = torch.channels_last if channels_last else torch.contiguous_format
    model = timm.create_model(model_name, num_classes=5).train().to(memory_format=layout)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, fused=True)
    x = torch.randn(batch, 3, size, size).contiguous(memory_format=layout)
    y = torch.randint(0, 5, (batch,))
    for i in range(steps + 3):
        if i == 3:
            start = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            out = model(x)
        loss = F.cross_entropy(out.float(), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return steps * batch / (time.perf_counter() - start)


def trainer_speed(
    model_name: str,
    size: int,
    batch: int,
    n: int,
    epochs: int,
    channels_last: bool,
    workers: int,
    amp: bool | str = True,
) -> dict:
    """Training-phase images/s of ``fit`` over epochs 2..N, plus the first epoch's."""
    with tempfile.TemporaryDirectory() as tmp:
        root = write_synthetic_dataset(Path(tmp) / "data", n=n, size=max(size * 2, 128), seed=0)
        recipe = parse_config(
            Recipe,
            {
                "data": {
                    "kind": "aptos2019",
                    "root": str(root),
                    "image_size": size,
                    "val_fraction": 0.1,
                    "num_workers": workers,
                },
                "model": {"name": model_name},
                "train": {
                    "epochs": epochs,
                    "batch_size": batch,
                    "seed": 0,
                    "channels_last": channels_last,
                    "amp": amp,
                },
                "schedule": {"name": "cosine"},
            },
            "bench",
        )
        started = time.perf_counter()
        result = fit(recipe, run_dir=Path(tmp) / "run")
        wall = time.perf_counter() - started
        log = [json.loads(line) for line in (Path(tmp) / "run" / "metrics.jsonl").open()]
    later = log[1:]
    images = sum(r["train"]["images"] for r in later)
    seconds = sum(r["train_seconds"] for r in later)
    return {
        "train_images_per_s": images / seconds,
        "first_epoch_images_per_s": log[0]["train"]["images"] / log[0]["train_seconds"],
        "epoch_seconds": [round(r["epoch_seconds"], 2) for r in log],
        "wall_seconds": round(wall, 1),
        "epochs": result.epochs_completed,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="resnet10t")
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--n", type=int, default=640)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--workers", type=int, default=0, help="data.num_workers")
    parser.add_argument("--no-channels-last", dest="channels_last", action="store_false")
    parser.add_argument("--amp", choices=["bf16"], help="bf16 autocast (train.amp: bf16)")
    args = parser.parse_args()
    threads = torch.get_num_threads()
    ours = trainer_speed(
        args.model, args.size, args.batch, args.n, args.epochs, args.channels_last, args.workers,
        args.amp or True,
    )  # fmt: skip
    steps = max(10, int(ours["train_images_per_s"] * 10 / args.batch))
    bf16 = args.amp == "bf16"
    pure_nchw = pure_speed(args.model, args.size, args.batch, steps, False, bf16)
    pure_nhwc = pure_speed(args.model, args.size, args.batch, steps, True, bf16)
    pure = pure_nhwc if args.channels_last else pure_nchw
    speed = ours["train_images_per_s"]
    layout = "channels_last" if args.channels_last else "NCHW"
    print(
        f"{args.model} @ {args.size}px, batch {args.batch}, {threads} torch threads, "
        f"trainer layout {layout}, {args.workers} loader workers, "
        f"{'bf16 autocast' if bf16 else 'fp32'}"
    )
    print(f"  pure fwd+bwd, NCHW          {pure_nchw:8.1f} img/s")
    print(f"  pure fwd+bwd, channels_last {pure_nhwc:8.1f} img/s")
    print(
        f"  drsearch training phase     {speed:8.1f} img/s "
        f"({speed / pure:.2f}x pure in the same layout, {speed / pure_nchw:.2f}x pure NCHW)"
    )
    print(f"  first epoch                 {ours['first_epoch_images_per_s']:8.1f} img/s")
    print(f"  epoch seconds (train+val) {ours['epoch_seconds']}, fit wall {ours['wall_seconds']}s")


if __name__ == "__main__":
    main()
