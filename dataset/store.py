"""The one compact on-disk format every dataset is prepared into.

A prepared dataset is a directory of plain ``.npy`` files (deterministic bytes, memory-mappable, no
pickle) plus ``card.json``::

    train_images.npy    uint8  [N, 3, H, W]
    train_labels.npy    int64  [N]
    train_masks.npy     uint8  [N, H, W]   optional: 1 = foreground (exact masks, e.g. ``scenes``)
    train_has_mask.npy  bool   [N]         optional: which images have a mask (absent: all of them, so
                                           ``scenes`` keeps its bytes); the others have all-zero masks
    test_*.npy          the same for the test split
    card.json           counts, class names, normalisation statistics, checksum

A dataset too large for memory (``card["storage"] == "stream"``: ImageNet, a large folder) keeps an index of
its image files instead of pixels (``<split>_files.npy``, ``<split>_labels.npy``; dataset/stream.py), and
loads as ``StreamSplit``s: the same labels, ``masked`` and ``images_at``, with views decoded from disk.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from core.errors import KdlensError
from core.files import atomic_dir, write_json

from .stream import StreamSplit, stream_split

SPLITS = ("train", "test")
OPTIONAL = ("masks", "has_mask")  # loaded when card.json lists them


@dataclass
class Split:
    images: np.ndarray  # uint8 [N, 3, H, W]
    labels: np.ndarray  # int64 [N]
    masks: np.ndarray | None = None  # uint8 [N, H, W], 1 = foreground
    has_mask: np.ndarray | None = None  # bool [N]: images whose mask is real (None: all, when masks exist)

    def __post_init__(self):
        if self.images.dtype != np.uint8 or self.images.ndim != 4 or self.images.shape[1] != 3:
            raise ValueError(f"images must be uint8 [N,3,H,W], got {self.images.dtype} {self.images.shape}")
        if len(self.labels) != len(self.images):
            raise ValueError("labels and images differ in length")
        if self.masks is not None and self.masks.shape != (len(self.images), *self.images.shape[2:]):
            raise ValueError(f"masks must be [N,H,W] matching the images, got {self.masks.shape}")
        if self.has_mask is not None and (self.masks is None or self.has_mask.shape != self.labels.shape):
            raise ValueError("has_mask needs masks and one flag per image")

    @property
    def masked(self) -> np.ndarray:
        """bool [N]: which images have a real foreground mask (none when the dataset has no masks)."""
        if self.masks is None:
            return np.zeros(len(self.labels), bool)
        return np.ones(len(self.labels), bool) if self.has_mask is None else self.has_mask.astype(bool)

    @property
    def side(self) -> int:
        return self.images.shape[-1]

    def images_at(self, ids) -> np.ndarray:
        """uint8 [n, 3, H, W]: images ``ids`` (as ``StreamSplit.images_at`` gives its test views)."""
        return self.images[ids]


@dataclass
class Prepared:
    train: Split | StreamSplit
    test: Split | StreamSplit
    card: dict

    @property
    def num_classes(self) -> int:
        return len(self.card["classes"])

    @property
    def input_size(self) -> int:
        """The side of every (square) image a network is given."""
        return self.train.side


def _arrays(split: Split) -> dict[str, np.ndarray]:
    out = {"images": split.images, "labels": split.labels.astype(np.int64)}
    if split.masks is not None:
        out["masks"] = split.masks.astype(np.uint8)
    if split.has_mask is not None:
        out["has_mask"] = split.has_mask.astype(bool)
    return out


def normalisation(train: Split) -> dict[str, list[float]]:
    """Per-channel mean and std of the training images in [0, 1] (the test split never enters them)."""
    x = train.images.astype(np.float64) / 255.0
    return {"mean": [round(float(v), 6) for v in x.mean(axis=(0, 2, 3))],
            "std": [round(float(v), 6) for v in x.std(axis=(0, 2, 3))]}


def in_memory(train: Split, test: Split, classes: list[str], name: str) -> Prepared:
    """A ``Prepared`` straight from a builder's splits, never written (benchmarks and tests)."""
    return Prepared(train=train, test=test, card={"classes": list(classes), "name": name, **normalisation(train)})


def card_counts(classes: list[str], train_labels: np.ndarray, test_labels: np.ndarray, image_shape: list[int]
                ) -> dict:
    """The card's classes, view shape and counts per split and class (every prepared format has them)."""
    return {
        "classes": list(classes),
        "num_classes": len(classes),
        "image_shape": image_shape,
        "counts": {
            "train": int(len(train_labels)),
            "test": int(len(test_labels)),
            "train_per_class": np.bincount(train_labels, minlength=len(classes)).tolist(),
            "test_per_class": np.bincount(test_labels, minlength=len(classes)).tolist(),
        },
    }


def save_prepared(out_dir: str | Path, train: Split, test: Split, classes: list[str], info: dict) -> dict:
    """Write both splits and the card into ``out_dir`` atomically (a temp dir renamed at the end)."""
    with atomic_dir(out_dir) as tmp:
        digest = hashlib.sha256()
        files = {}
        for split_name, split in zip(SPLITS, (train, test)):
            for key, arr in _arrays(split).items():
                fname = f"{split_name}_{key}.npy"
                np.save(tmp / fname, np.ascontiguousarray(arr), allow_pickle=False)
                digest.update((tmp / fname).read_bytes())
                files[fname] = list(arr.shape)
        card = {
            **card_counts(classes, train.labels, test.labels, list(train.images.shape[1:])),
            "has_masks": train.masks is not None and test.masks is not None,
            "mask_counts": {"train": int(train.masked.sum()), "test": int(test.masked.sum())},
            **normalisation(train),
            "files": files,
            "sha256": digest.hexdigest(),
            **info,
        }
        write_json(tmp / "card.json", card)
    return card


def load_prepared(data_dir: str | Path, workers: int = 0) -> Prepared:
    """Load a prepared dataset; a missing or corrupt file gives one line naming it. ``workers``: the
    decoding processes of a streamed dataset's loaders (``data.workers``)."""
    data_dir = Path(data_dir)
    card_path = data_dir / "card.json"
    try:
        card = json.loads(card_path.read_text())
    except FileNotFoundError:
        raise KdlensError(f"{card_path}: missing; run the data stage first (dvc repro prepare_data)") from None
    except json.JSONDecodeError as e:
        raise KdlensError(f"{card_path}: corrupt JSON ({e}); re-run: dvc repro -f prepare_data") from None
    streamed = card.get("storage") == "stream"
    splits = {}
    for split_name in SPLITS:
        arrays = {}
        for key in ("files", "labels") if streamed else ("images", "labels", "masks", "has_mask"):
            path = data_dir / f"{split_name}_{key}.npy"
            if key in OPTIONAL and path.name not in card["files"]:
                continue
            try:
                arrays[key] = np.load(path, allow_pickle=False)
            except FileNotFoundError:
                raise KdlensError(f"{path}: missing; re-run: dvc repro -f prepare_data") from None
            except (ValueError, OSError, EOFError) as e:
                raise KdlensError(f"{path}: corrupt ({e}); re-run: dvc repro -f prepare_data") from None
            expected = card["files"].get(path.name)
            if expected is not None and list(arrays[key].shape) != expected:
                raise KdlensError(f"{path}: shape {list(arrays[key].shape)} does not match card.json "
                                  f"{expected}; re-run: dvc repro -f prepare_data")
        splits[split_name] = stream_split(arrays, card, card_path, workers) if streamed else Split(**arrays)
    return Prepared(train=splits["train"], test=splits["test"], card=card)
