"""In-memory batch loading with augmentation that is a pure function of (seed, epoch, sample index).

Prepared datasets are small uint8 arrays, so batches are sliced from one tensor on the training device
instead of going through worker processes. Every random choice for an epoch (the order and each
sample's crop offset and flip) is drawn once from a generator seeded by (seed, epoch), indexed by the
sample's position in the dataset: every student of a sweep sees the same views, and a resumed run
sees exactly what an uninterrupted one would have.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator

import numpy as np
import torch

from .store import Split

PAD = 4  # reflect-free zero padding of the standard CIFAR crop+flip augmentation


def epoch_generator(seed: int, epoch: int, stream: int = 0) -> torch.Generator:
    """A CPU generator whose state depends only on (seed, epoch, stream)."""
    mixed = np.random.SeedSequence([seed, epoch, stream]).generate_state(1, dtype=np.uint64)[0]
    return torch.Generator().manual_seed(int(mixed) & 0x7FFF_FFFF_FFFF_FFFF)


@dataclass
class EpochPlan:
    order: torch.Tensor  # permutation of sample indices
    offsets: torch.Tensor  # [N, 2] crop offsets in [0, 2*PAD]
    flips: torch.Tensor  # [N] bool


def epoch_plan(n: int, seed: int, epoch: int, augment: bool, shuffle: bool) -> EpochPlan:
    g = epoch_generator(seed, epoch)
    order = torch.randperm(n, generator=g) if shuffle else torch.arange(n)
    if augment:
        offsets = torch.randint(0, 2 * PAD + 1, (n, 2), generator=g)
        flips = torch.rand(n, generator=g) < 0.5
    else:
        offsets = torch.full((n, 2), PAD, dtype=torch.long)
        flips = torch.zeros(n, dtype=torch.bool)
    return EpochPlan(order, offsets, flips)


def crop_flip(images: torch.Tensor, offsets: torch.Tensor, flips: torch.Tensor) -> torch.Tensor:
    """Zero-pad by PAD, take the crop at each sample's offset, mirror where flipped (batched gather)."""
    b, c, h, w = images.shape
    padded = torch.nn.functional.pad(images, (PAD, PAD, PAD, PAD))
    ar_h = torch.arange(h, device=images.device)
    ar_w = torch.arange(w, device=images.device)
    rows = offsets[:, 0:1].to(images.device) + ar_h  # [B, H]
    cols = offsets[:, 1:2].to(images.device) + ar_w  # [B, W]
    cols = torch.where(flips.to(images.device)[:, None], cols.flip(1), cols)
    bi = torch.arange(b, device=images.device)[:, None, None]
    out = padded.permute(0, 2, 3, 1)[bi, rows[:, :, None], cols[:, None, :]]  # [B, H, W, C]
    return out.permute(0, 3, 1, 2)


class Loader:
    """Batches of (normalised float images, labels, dataset indices) for one split."""

    def __init__(self, split: Split, mean, std, batch_size: int, device: torch.device,
                 augment: bool = False, shuffle: bool = False, seed: int = 0, drop_last: bool = False):
        self.images = torch.from_numpy(split.images).to(device)
        self.labels = torch.from_numpy(split.labels).to(device)
        self.mean = torch.tensor(mean, device=device).view(1, -1, 1, 1) * 255.0
        self.std = torch.tensor(std, device=device).view(1, -1, 1, 1) * 255.0
        self.batch_size, self.augment, self.shuffle, self.seed = batch_size, augment, shuffle, seed
        self.drop_last = drop_last

    def __len__(self) -> int:
        n = len(self.labels)
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    @property
    def num_samples(self) -> int:
        return len(self.labels)

    def normalise(self, images_uint8: torch.Tensor) -> torch.Tensor:
        return (images_uint8.float() - self.mean) / self.std

    def batches(self, epoch: int = 0, rank: int = 0, ranks: int = 1
                ) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        """The epoch's batches; with ``ranks`` > 1, this rank's share of each: every ``ranks``-th sample of
        the global batch from position ``rank`` on, so the ranks' shares of a step are disjoint and make up
        exactly the batch one process gets (same samples, same views)."""
        plan = epoch_plan(len(self.labels), self.seed, epoch, self.augment, self.shuffle)
        for i in range(len(self)):
            idx = plan.order[i * self.batch_size:(i + 1) * self.batch_size][rank::ranks]
            idx_dev = idx.to(self.images.device)
            x = self.images[idx_dev]
            if self.augment:
                x = crop_flip(x, plan.offsets[idx], plan.flips[idx])
            yield self.normalise(x), self.labels[idx_dev], idx_dev
