"""`drsearch predict` throughput: images graded per second, end to end and by part.

    python bench/predict_speed.py [--recipe recipes/demo.yaml] [--n 1000] [--source-size 512]
                                  [--repeats 3]

Writes ``--n`` synthetic fundus PNGs at ``--source-size`` px (a clinic's images are larger
than the model's input: decoding and resizing them is part of the bill), then grades the
folder with the recipe's model (random weights: speed does not depend on them) through
``inspect.predict.predict_images``, the code ``drsearch predict`` runs, with one view and with
the three TTA views. Also shown: decode + preprocess alone, and the model's forward pass
alone on in-memory tensors (the ceiling). Median of ``--repeats``. Prints figures; asserts
nothing.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np
import torch

from drsearch.config.loading import load_recipe
from drsearch.data.decode import decode_into
from drsearch.data.synth import draw_fundus
from drsearch.inspect.predict import Grader, find_images, predict_images
from drsearch.train.model import build_model
from drsearch.train.predict import TrainedModel


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--recipe", type=Path, default=Path("recipes/demo.yaml"))
    parser.add_argument("--n", type=int, default=1000)
    parser.add_argument("--source-size", type=int, default=512)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    recipe = load_recipe(args.recipe)
    size = recipe.data.image_size
    batch = recipe.train.eval_batch_size or 2 * recipe.train.batch_size
    model_cfg = recipe.model.model_copy(update={"pretrained": False})
    model = build_model(model_cfg, size, False).eval()
    member = TrainedModel("bench", recipe, model.state_dict(), {})
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        rng = np.random.default_rng(0)
        for i in range(args.n):
            img = draw_fundus(i % 5, args.source_size, rng)
            cv2.imwrite(str(folder / f"img{i:05d}.png"), cv2.cvtColor(img, cv2.COLOR_RGB2BGR))
        images = find_images(folder)
        paths = [p for _, p in images]

        def timed(fn) -> float:  # type: ignore[no-untyped-def]
            runs = []
            for _ in range(args.repeats):
                start = time.perf_counter()
                fn()
                runs.append(time.perf_counter() - start)
            return args.n / statistics.median(runs)

        def decode() -> None:
            arrays = {size: np.empty((len(paths), size, size, 3), np.uint8)}
            decode_into(paths, arrays, recipe.data.preprocess)

        x = torch.randn(batch, 3, size, size)

        @torch.no_grad()
        def forward() -> None:
            for _ in range(0, args.n, batch):
                model(x)

        one = Grader("bench", [member], ("identity",), {})
        tta = Grader("bench", [member], ("identity", "hflip", "vflip"), {})
        print(
            f"{recipe.model.name} at {size} px, {args.n} PNGs of {args.source_size} px, batch "
            f"{batch}, {torch.get_num_threads()} torch threads, median of {args.repeats}"
        )
        rows = [
            ("drsearch predict, 1 view", timed(lambda: predict_images(one, images))),
            ("drsearch predict, 3 TTA views", timed(lambda: predict_images(tta, images))),
            ("decode + preprocess only", timed(decode)),
            ("forward pass only (ceiling)", timed(forward)),
        ]
        for what, speed in rows:
            print(f"  {what + ':':32s}{speed:8.1f} images/s")


if __name__ == "__main__":
    main()
