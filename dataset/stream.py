"""Splits streamed from disk: images decoded on the fly in DataLoader worker processes, never a whole split
in memory (ImageNet's 1.28 M training images are ~190 GB as uint8 at 224 px).

A streamed split is an index (``<split>_files.npy``: the image paths under ``data.root`` as one fixed-width
bytes array; ``<split>_labels.npy``), written by ``prepare_data`` (dataset/index.py). Numpy arrays rather
than Python lists of strings: forked workers read them without touching per-object reference counts, so
their pages stay shared and memory does not grow with the number of workers or images.

The views follow the ImageNet recipe of He et al. ("Deep Residual Learning for Image Recognition", CVPR
2016, section 3.4, in torchvision's form) that the distillation references train with:

* training: ``RandomResizedCrop(image_size)`` (scale 0.08-1, ratio 3/4-4/3, bilinear) + horizontal flip;
* test: resize the shorter side to ``image_size`` x 256/224, then a centre crop of ``image_size``.

torchvision's v2 transforms draw the crop; what they lack is written here:

* **the view of sample i in epoch e is a pure function of (seed, e, i)**: its crop and flip are drawn
  from the global generator seeded by (seed, e, i) inside ``torch.random.fork_rng``, whatever process or
  worker decodes it (and the caller's generator is left as it was), so resume, the teacher cache and the
  ranks' shares of a batch hold as for in-memory data; a method's strong view (dataset/augment.py) is
  drawn alike, from seeds of its own;
* **JPEG draft decoding**: the crop is chosen from the header's size before decoding, and Pillow's
  libjpeg decodes at the smallest DCT scale (1/2, 1/4, 1/8) that still gives the crop at least
  ``image_size`` pixels a side, then crops and resizes that. Large photos and small ``image_size`` (the
  64-px tests) decode several times faster; a crop as large as the output decodes at full scale;
* batches travel from the workers as uint8 and are normalised on the training device
  (``dataset.loader.StreamLoader``).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from core.errors import KdlensError, one_line
from .augment import STRONG, STRONG_OPS_STREAM, STRONG_STREAM, strong_draws, strong_ops


TEST_RESIZE = 256 / 224  # the test view's shorter side, relative to image_size
VIEW_STREAM = 2  # the SeedSequence stream of per-sample views (0: the epoch's order, 1: the trainer's steps)
# torchvision's ImageNet statistics: the normalisation its pretrained weights (and so imported teachers) expect.
IMAGENET_MEAN = [0.485, 0.456, 0.406]
IMAGENET_STD = [0.229, 0.224, 0.225]


def view_seed(seed: int, epoch: int, index: int, stream: int = VIEW_STREAM) -> int:
    """The seed of sample ``index``'s view in ``epoch`` (``stream``: which of its views, or which of their
    draws; dataset/augment.py): depends on nothing else."""
    return int(np.random.SeedSequence([seed, epoch, stream, index]).generate_state(1, dtype=np.uint64)[0]
               & 0x7FFF_FFFF_FFFF_FFFF)


def torchvision_transforms():
    """(torchvision.transforms.v2, its functional module), imported when a view is first made: importing
    torchvision (which loads torch._dynamo) adds ~2 s to the start of every stage process, and only
    streamed data needs it here (dataset/cifar.py defers its torchvision import for the same reason)."""
    from torchvision.transforms import v2
    from torchvision.transforms.v2 import functional

    return v2, functional


def _draft(im: Image.Image, width: float, height: float) -> tuple[float, float]:
    """Let a JPEG decode at the smallest scale still at least ``width`` x ``height``; returns the scale
    actually taken per axis (1 for other formats)."""
    w0, h0 = im.size
    im.draft("RGB", (math.ceil(width), math.ceil(height)))
    return im.size[0] / w0, im.size[1] / h0


def _rgb(im: Image.Image) -> Image.Image:
    return im if im.mode == "RGB" else im.convert("RGB")


def train_view(im: Image.Image, size: int, seed: int, epoch: int, index: int, stream: int = VIEW_STREAM
               ) -> torch.Tensor:
    """uint8 [3, size, size]: RandomResizedCrop + horizontal flip of the opened (undecoded) ``im``, drawn
    from ``view_seed(seed, epoch, index, stream)``."""
    v2, F = torchvision_transforms()
    with torch.random.fork_rng(devices=[]):
        # CPU generator only: torch.manual_seed also seeds CUDA/MPS/XPU, and while CUDA is not initialised it
        # queues that seed with traceback.format_stack() (~0.3 ms a call, more in a DataLoader worker)
        torch.default_generator.manual_seed(view_seed(seed, epoch, index, stream))
        box = v2.RandomResizedCrop(size).make_params([im])  # reads the header's size only
        flip = bool(torch.rand(1) < 0.5)
    top, left, height, width = box["top"], box["left"], box["height"], box["width"]
    sx, sy = _draft(im, im.size[0] * size / width, im.size[1] * size / height)
    view = F.resized_crop(_rgb(im), round(top * sy), round(left * sx), max(round(height * sy), 1),
                          max(round(width * sx), 1), [size, size], antialias=True)
    view = F.pil_to_tensor(view)
    return F.horizontal_flip(view) if flip else view


def test_view(im: Image.Image, size: int) -> torch.Tensor:
    """uint8 [3, size, size]: the shorter side resized to size x 256/224, then the centre crop."""
    _, F = torchvision_transforms()
    short = round(size * TEST_RESIZE)
    scale = short / min(im.size)
    _draft(im, im.size[0] * scale, im.size[1] * scale)
    view = F.center_crop(F.resize(_rgb(im), short, antialias=True), [size, size])
    return F.pil_to_tensor(view)


@dataclass
class StreamSplit:
    """One split as an index of image files under ``root``; pixels are read when a view is asked for."""

    root: Path
    files: np.ndarray  # fixed-width bytes [N]: posix paths under root
    labels: np.ndarray  # int64 [N]
    image_size: int
    workers: int = 0  # DataLoader processes of its loaders (data.workers; the views do not depend on it)
    masks = None  # streamed splits carry no foreground masks (the knowledge metrics use the centre-box prior)
    has_mask = None

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def side(self) -> int:
        return self.image_size

    @property
    def masked(self) -> np.ndarray:
        return np.zeros(len(self.labels), bool)

    def path(self, index: int) -> Path:
        return self.root / self.files[index].decode()

    def open(self, index: int) -> Image.Image:
        """Image ``index``, opened (header read); a file gone or changed since ``prepare_data`` checked it
        stops with one line naming it."""
        path = self.path(index)
        try:
            return Image.open(path)
        except Exception as e:  # noqa: BLE001 - every failure means the index no longer matches the folder
            raise KdlensError(f"{path}: unreadable ({one_line(e)}); the folder changed after prepare_data: "
                              "re-run dvc repro -f prepare_data") from None

    def images_at(self, ids) -> np.ndarray:
        """uint8 [n, 3, S, S]: the test views of images ``ids`` (the analysis stages' few images)."""
        out = np.zeros((len(ids), 3, self.image_size, self.image_size), np.uint8)
        for row, i in enumerate(ids):
            with self.open(int(i)) as im:
                out[row] = test_view(im, self.image_size).numpy()
        return out


def strong_view(im: Image.Image, size: int, seed: int, epoch: int, index: int) -> torch.Tensor:
    """uint8 [3, size, size]: the strong view (dataset/augment.py) of the opened ``im``: a training crop and
    flip of its own, then the strong operations, each drawn from its own per-sample seed."""
    crop = train_view(im, size, seed, epoch, index, STRONG_STREAM)
    draws = strong_draws(1, torch.Generator().manual_seed(view_seed(seed, epoch, index, STRONG_OPS_STREAM)))
    return strong_ops(crop[None], draws)[0]


class ImageViews(Dataset):
    """``views[(epoch, index, extra)]``: (the uint8 view of image ``index`` in ``epoch`` (training views) or
    its test view (``augment`` False), {view: uint8 view} for each of the ``extra`` views, ``index``);
    decoded in whichever worker process asks."""

    def __init__(self, split: StreamSplit, augment: bool, seed: int):
        self.split, self.augment, self.seed = split, augment, seed

    def __len__(self) -> int:
        return len(self.split)

    def __getitem__(self, key: tuple[int, int, tuple[str, ...]]) -> tuple[torch.Tensor, dict, int]:
        epoch, index, extra = key
        size, seed = self.split.image_size, self.seed
        view = self._decoded(index, lambda im: train_view(im, size, seed, epoch, index) if self.augment
                             else test_view(im, size))
        # Opened again: a JPEG decodes once, at the draft scale its first crop chose.
        views = {STRONG: self._decoded(index, lambda im: strong_view(im, size, seed, epoch, index))} \
            if STRONG in extra else {}
        return view, views, index

    def _decoded(self, index: int, make):
        with self.split.open(index) as im:
            try:
                return make(im)
            except Exception as e:  # noqa: BLE001 - a decoder fails in many ways on changed bytes
                raise KdlensError(f"{self.split.path(index)}: unreadable ({one_line(e)}); the folder changed "
                                  "after prepare_data: re-run dvc repro -f prepare_data") from None


# ------------------------------------------------------------------------------------------- on disk
def index_files(split_name: str) -> tuple[str, str]:
    return f"{split_name}_files.npy", f"{split_name}_labels.npy"


def save_split(out_dir: Path, split_name: str, files: list[str], labels: np.ndarray) -> dict[str, list[int]]:
    """Write one split's index; returns {file name: shape} for the card."""
    names = index_files(split_name)
    arrays = (np.array([f.encode() for f in files], dtype=bytes), labels.astype(np.int64))
    for name, arr in zip(names, arrays):
        np.save(out_dir / name, arr, allow_pickle=False)
    return {name: list(arr.shape) for name, arr in zip(names, arrays)}


def stream_split(arrays: dict[str, np.ndarray], card: dict, card_path: Path, workers: int) -> StreamSplit:
    """One split of a streamed dataset from its loaded index arrays; ``data.root`` must still be where it
    was when prepared."""
    root = Path(card["root"])
    if not root.is_dir():
        raise KdlensError(f"data.root: {root} (the images indexed in {card_path}) is not a directory here; "
                          "mount or copy the folder there, or re-run prepare_data with the new data.root")
    return StreamSplit(root, arrays["files"], arrays["labels"], card["image_size"], workers)
