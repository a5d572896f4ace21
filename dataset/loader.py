"""Batch loading with augmentation that is a pure function of (seed, epoch, sample index).

``BatchLoader`` is what every loader shares: the epoch's order and each rank's share of a batch. Small
prepared datasets (``Loader``) are uint8 arrays, so batches are sliced from one tensor on the training
device instead of going through worker processes; every random choice for an epoch (the order and each
sample's crop offset and flip) is drawn once from a generator seeded by (seed, epoch), indexed by the
sample's position in the dataset. Splits streamed from disk (dataset/stream.py) take the same order and
draw each view from (seed, epoch, index). Either way every student of a sweep sees the same views, and a
resumed run sees exactly what an uninterrupted one would have.

``view_batches`` also yields the extra views a method asks for (dataset/augment.py: the strong view), each
drawn as a pure function of (seed, epoch, index) as well: in memory from its own per-epoch plan, streamed
from its own per-sample seeds.
"""
from __future__ import annotations

import weakref
from dataclasses import dataclass
from typing import Iterator

import numpy as np
import torch
from torch.utils.data import DataLoader, Sampler

from .augment import STRONG, STRONG_STREAM, StrongDraws, check_views, strong_draws, strong_ops
from .store import Split
from .stream import ImageViews, StreamSplit, torchvision_transforms

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


@dataclass
class StrongPlan:
    """The strong views of an epoch's samples (in memory), indexed by dataset position: a crop and flip
    of their own, then the strong operations (dataset/augment.py)."""

    offsets: torch.Tensor  # [N, 2]
    flips: torch.Tensor  # [N] bool
    draws: StrongDraws

    def views(self, images: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
        """uint8 strong views of ``images``, the samples ``idx`` (CPU) of the dataset."""
        return strong_ops(crop_flip(images, self.offsets[idx], self.flips[idx]), self.draws[idx])


def strong_plan(n: int, seed: int, epoch: int) -> StrongPlan:
    """Drawn from its own generator, so the standard views (``epoch_plan``) are the same with or without it."""
    g = epoch_generator(seed, epoch, STRONG_STREAM)
    offsets = torch.randint(0, 2 * PAD + 1, (n, 2), generator=g)
    flips = torch.rand(n, generator=g) < 0.5
    return StrongPlan(offsets, flips, strong_draws(n, g))


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


class BatchLoader:
    """What every loader of a split shares: the epoch's batches of sample indices (the order of
    ``epoch_plan``, each rank's share of a batch) and the normalisation, done on the training device on
    uint8 images (a quarter of float32's bytes to move). Subclasses say where the pixels come from."""

    def __init__(self, labels: np.ndarray, mean, std, batch_size: int, device: torch.device, augment: bool,
                 shuffle: bool, seed: int, drop_last: bool):
        self.labels = torch.from_numpy(labels).to(device)
        self.device = device
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
        # one float copy, normalised in place: (x.float() - mean) / std allocates three batch-sized float
        # tensors, which on a CPU device costs ~3x the time (fresh pages for each) and twice the peak memory
        return images_uint8.to(torch.float32, copy=True).sub_(self.mean).div_(self.std)

    def plan(self, epoch: int) -> EpochPlan:
        return epoch_plan(len(self.labels), self.seed, epoch, self.augment, self.shuffle)

    def share(self, plan: EpochPlan, step: int, rank: int, ranks: int) -> torch.Tensor:
        """Batch ``step``'s sample indices for ``rank``: every ``ranks``-th sample of the global batch from
        position ``rank`` on, so the ranks' shares of a step are disjoint and make up exactly the batch one
        process gets (same samples, same views)."""
        return plan.order[step * self.batch_size:(step + 1) * self.batch_size][rank::ranks]

    def batches(self, epoch: int = 0, rank: int = 0, ranks: int = 1
                ) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        """The epoch's batches of (normalised float images, labels, dataset indices); with ``ranks`` > 1,
        this rank's share of each (``share``)."""
        for x, y, idx, _ in self.view_batches(epoch, rank, ranks):
            yield x, y, idx

    def view_batches(self, epoch: int = 0, rank: int = 0, ranks: int = 1, extra: tuple[str, ...] = ()
                     ) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]]:
        """``batches`` with a fourth item: {view: its normalised images} for each of the ``extra`` views
        (dataset/augment.py), of the same samples in the same order."""
        raise NotImplementedError  # pragma: no cover - abstract


class Loader(BatchLoader):
    """Batches of a split held in memory, sliced from one uint8 tensor on the training device."""

    def __init__(self, split: Split, mean, std, batch_size: int, device: torch.device,
                 augment: bool = False, shuffle: bool = False, seed: int = 0, drop_last: bool = False):
        super().__init__(split.labels, mean, std, batch_size, device, augment, shuffle, seed, drop_last)
        self.images = torch.from_numpy(split.images).to(device)

    def view_batches(self, epoch: int = 0, rank: int = 0, ranks: int = 1, extra: tuple[str, ...] = ()):
        check_views(extra)
        plan = self.plan(epoch)
        strong = strong_plan(len(self.labels), self.seed, epoch) if STRONG in extra else None
        for step in range(len(self)):
            idx = self.share(plan, step, rank, ranks)
            idx_dev = idx.to(self.device)
            images = self.images[idx_dev]
            x = crop_flip(images, plan.offsets[idx], plan.flips[idx]) if self.augment else images
            views = {STRONG: self.normalise(strong.views(images, idx))} if strong is not None else {}
            yield self.normalise(x), self.labels[idx_dev], idx_dev, views


class _EpochBatches(Sampler):
    """The batch sampler of one pass: ``start`` gives it the pass's batches of (epoch, index, extra views),
    made one batch at a time as the DataLoader asks (an epoch's whole list would grow with the dataset)."""

    def __init__(self, loader: "StreamLoader"):
        # A weak reference: the loader owns the DataLoader that owns this sampler, and a strong one back
        # would make a cycle, freed only by the garbage collector, which finalises the DataLoader's worker
        # queues before the DataLoader itself; its workers then never get the stop signal and each join
        # waits out its 5 s timeout (20 s a stage with two loaders of two workers). Without the cycle the
        # workers stop as soon as the loader goes.
        self._loader = weakref.ref(loader)
        self.pass_batches: Iterator[list[tuple[int, int, tuple[str, ...]]]] = iter(())

    def start(self, epoch: int, rank: int, ranks: int, extra: tuple[str, ...]) -> None:
        loader = self._loader()
        plan = loader.plan(epoch)
        self.pass_batches = ([(epoch, int(i), extra) for i in loader.share(plan, step, rank, ranks)]
                             for step in range(len(loader)))

    def __len__(self) -> int:
        return len(self._loader())

    def __iter__(self):
        return self.pass_batches


class StreamLoader(BatchLoader):
    """Batches of a streamed split, decoded by ``split.workers`` DataLoader processes (0: in this process),
    kept alive across epochs. Same order, shares and batch shapes as ``dataset.loader.Loader``."""

    def __init__(self, split: StreamSplit, mean, std, batch_size: int, device: torch.device,
                 augment: bool = False, shuffle: bool = False, seed: int = 0, drop_last: bool = False):
        super().__init__(split.labels, mean, std, batch_size, device, augment, shuffle, seed, drop_last)
        self.split = split
        torchvision_transforms()  # imported before the workers fork, so that each inherits it (~2 s apiece)
        self._sampler = _EpochBatches(self)
        # Its own generator: a DataLoader draws a base seed for its workers on every pass, which would
        # otherwise come from the global generator the trainer seeds for dropout and the methods' sampling.
        # The views never read that seed (view_seed), so neither generator changes a pixel.
        self._loader = DataLoader(ImageViews(split, augment, seed), batch_sampler=self._sampler,
                                  num_workers=split.workers, pin_memory=device.type == "cuda",
                                  persistent_workers=split.workers > 0, generator=torch.Generator())

    def view_batches(self, epoch: int = 0, rank: int = 0, ranks: int = 1, extra: tuple[str, ...] = ()):
        check_views(extra)
        self._sampler.start(epoch, rank, ranks, tuple(extra))
        for x, views, idx in self._loader:  # the workers hand back each view's index with it
            idx_dev = idx.to(self.device)
            views = {name: self.normalise(v.to(self.device, non_blocking=True)) for name, v in views.items()}
            yield self.normalise(x.to(self.device, non_blocking=True)), self.labels[idx_dev], idx_dev, views


LOADERS: dict[type, type[BatchLoader]] = {Split: Loader, StreamSplit: StreamLoader}


def loader_for(split: Split | StreamSplit, mean, std, batch_size: int, device: torch.device, augment: bool = False,
               shuffle: bool = False, seed: int = 0, drop_last: bool = False) -> BatchLoader:
    """The loader of ``split``: sliced from memory, or streamed from disk."""
    return LOADERS[type(split)](split, mean, std, batch_size, device, augment=augment, shuffle=shuffle, seed=seed,
                                drop_last=drop_last)
