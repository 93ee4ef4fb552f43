"""Batches from the decoded-once image cache, with random augmentation per epoch.

An epoch is a list of batches of record indices fixed by ``(seed, epoch)``; each batch's
augmentation is seeded by ``(seed, epoch, batch)``. The batches are therefore the same with
any number of loader workers and after a resume, which is what makes runs reproducible.
Images travel as uint8 HxWx3 and are normalised on the device, batch-wise.
"""

from __future__ import annotations

from dataclasses import dataclass

import albumentations as A
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset


def epoch_seed(seed: int, epoch: int, batch: int = -1) -> int:
    """A 31-bit seed for one epoch (or one batch of it)."""
    mixed = np.random.SeedSequence([seed & 0x7FFFFFFF, epoch + 1, batch + 1]).generate_state(1)
    return int(mixed[0] & 0x7FFFFFFF)


def accumulation_group(batch: int, n_batches: int, accum: int) -> tuple[int, bool]:
    """How many batches the accumulation group of ``batch`` (0-based) holds, and whether
    the optimizer steps after it. The last group of an epoch may be shorter than ``accum``:
    its gradient is the mean over the batches it really has."""
    start = batch // accum * accum
    size = min(accum, n_batches - start)
    return size, batch + 1 == start + size


@dataclass
class Split:
    """The images of one side of the split at one size."""

    images: np.ndarray  # all cached images at this size, N x S x S x 3 uint8
    indices: np.ndarray  # which of them belong to this split
    labels: np.ndarray  # grade of each of ``indices``


class _Batches(Dataset):
    """Item ``k`` is batch ``k``: a uint8 tensor B x S x S x 3 and the labels."""

    def __init__(
        self, split: Split, batches: list[np.ndarray], pipeline: A.Compose | None, seeds: list[int]
    ) -> None:
        self.split, self.batches, self.pipeline, self.seeds = split, batches, pipeline, seeds

    def __len__(self) -> int:
        return len(self.batches)

    def __getitem__(self, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        rows = self.batches[k]
        images = self.split.images[self.split.indices[rows]]
        if self.pipeline is not None:
            self.pipeline.set_random_seed(self.seeds[k])
            images = np.stack([self.pipeline(image=img)["image"] for img in images])
        return torch.from_numpy(np.ascontiguousarray(images)), torch.from_numpy(
            self.split.labels[rows].astype(np.int64)
        )


def train_batches(
    split: Split,
    batch_size: int,
    seed: int,
    epoch: int,
    pipeline: A.Compose | None,
    workers: int,
) -> DataLoader:
    """Shuffled full batches for one training epoch (the last partial batch is dropped)."""
    order = np.random.default_rng(epoch_seed(seed, epoch)).permutation(len(split.indices))
    n_full = max(1, len(order) // batch_size)
    batches = [order[i * batch_size : (i + 1) * batch_size] for i in range(n_full)]
    seeds = [epoch_seed(seed, epoch, k) for k in range(len(batches))]
    return _loader(_Batches(split, batches, pipeline, seeds), workers)


def eval_batches(split: Split, batch_size: int, workers: int) -> DataLoader:
    """Every image once, in order, unaugmented."""
    order = np.arange(len(split.indices))
    batches = [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
    return _loader(_Batches(split, batches, None, [0] * len(batches)), workers)


def _loader(dataset: _Batches, workers: int) -> DataLoader:
    return DataLoader(
        dataset,
        batch_size=None,
        shuffle=False,
        num_workers=workers,
        persistent_workers=False,
        pin_memory=torch.cuda.is_available(),
    )


class Normalizer:
    """uint8 B x H x W x 3 on any device -> normalised float B x 3 x H x W."""

    def __init__(
        self,
        mean: tuple[float, ...],
        std: tuple[float, ...],
        device: torch.device,
        channels_last: bool = False,
    ) -> None:
        self.mean = torch.tensor(mean, device=device).view(1, 3, 1, 1) * 255
        self.std = torch.tensor(std, device=device).view(1, 3, 1, 1) * 255
        self.layout = torch.channels_last if channels_last else torch.contiguous_format

    def __call__(self, batch: torch.Tensor) -> torch.Tensor:
        x = batch.to(self.mean.device, non_blocking=True).permute(0, 3, 1, 2).float()
        return ((x - self.mean) / self.std).contiguous(memory_format=self.layout)
