"""The index of an image folder too large for memory: ``data.name: imagenet`` (``train/<wnid>/*``,
``val/<wnid>/*``, the layout of ILSVRC-2012 once its validation images sit in class folders), or
``data.name: folder`` with ``data.storage: stream`` (``train/``, ``test/``).

``prepare_data`` writes no pixels for such data, only what the stream loader (dataset/stream.py) needs:

* ``<split>_files.npy`` / ``<split>_labels.npy``: every readable image, in sorted class and file order;
* ``card.json``: classes, counts per split and class, ``root``, ``image_size``, the skipped files (their
  count and the first ten, as for folders held in memory: unreadable, empty, too large, linked from
  outside ``data.root``), the mean/std, and ``sha256``: the SHA-256 of the listing, one line per image
  with its path, label and the SHA-256 of its bytes. Every later stage depends on the card, so editing an
  image in place re-runs them, as DVC's hash of ``data.root`` re-runs this stage.

Every file is decoded once here (a JPEG at its reduced scale, so it is quick), in ``data.workers``
threads, chunk by chunk: a file that would fail while training is skipped and counted now instead.
Normalisation: torchvision's ImageNet mean/std for ``imagenet`` (what pretrained teachers expect); a
folder's own, from those check decodes of its training images (32 px), accumulated image by image.
"""
from __future__ import annotations

import hashlib
import warnings
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from itertools import islice
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm import tqdm

from core.errors import KdlensError
from core.files import atomic_dir, sha256_file, write_json
from dataset.params import DataParams

from .folder import FOLDER_DIRS, NAMED, Item, decode, scan
from .store import SPLITS, card_counts
from .stream import IMAGENET_MEAN, IMAGENET_STD, TEST_RESIZE, save_split

IMAGENET_DIRS = {"train": "train", "test": "val"}
CHECK_SIDE = 32  # the check decode's side; its pixels give a folder's mean/std
CHUNK = 512  # files in flight at once: the listing of a split, not its pixels, is what stays in memory


def _check(root: Path, max_pixels: int, item: Item) -> tuple[str | None, np.ndarray | None, str | None]:
    """(why it is skipped or None, its per-channel [mean, mean of squares] in [0, 1], its bytes' SHA-256)."""
    image, _, why = decode(root, CHECK_SIDE, max_pixels, item)
    if image is None:
        return why, None, None
    x = image.reshape(3, -1).astype(np.float64) / 255.0
    return None, np.concatenate([x.mean(1), (x * x).mean(1)]), sha256_file(root / item.rel)


def _check_split(root: Path, items: list[Item], max_pixels: int, workers: int, split: str, digest
                 ) -> tuple[list[Item], list[str], np.ndarray]:
    """The readable items of one split, what was skipped, and the summed moments of the readable ones."""
    kept, skipped, moments = [], [], np.zeros(6)
    check = partial(_check, root, max_pixels)
    bar = tqdm(total=len(items), desc=f"checking {split}", unit="img", disable=None)
    # Image.open warns above Pillow's MAX_IMAGE_PIXELS; data.max_pixels decides instead (folder.py).
    with warnings.catch_warnings(), ThreadPoolExecutor(max(workers, 1)) as pool:
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        it = iter(items)
        while chunk := list(islice(it, CHUNK)):
            for item, (why, m, sha) in zip(chunk, pool.map(check, chunk)):
                if why is not None:
                    skipped.append(why)
                    continue
                kept.append(item)
                moments += m
                digest.update(f"{split}\t{item.rel}\t{item.label}\t{sha}\n".encode())
            bar.update(len(chunk))
    bar.close()
    return kept, skipped, moments


def build_index(p: DataParams, out_dir: str | Path) -> dict:
    """Check every image of ``p.root`` and write the index and card into ``out_dir`` (atomically)."""
    root = Path(p.root)
    imagenet = p.name == "imagenet"
    classes, items, skipped = scan(root, IMAGENET_DIRS if imagenet else FOLDER_DIRS, p.name)
    lost = len(skipped)
    digest = hashlib.sha256()
    kept, labels, moments = {}, {}, None
    for split in SPLITS:
        kept[split], why, m = _check_split(root, items[split], p.max_pixels, p.workers, split, digest)
        skipped += why
        lost += len(why)
        labels[split] = np.array([it.label for it in kept[split]], np.int64)
        empty = np.flatnonzero(np.bincount(labels[split], minlength=len(classes)) == 0)
        if len(empty):
            raise KdlensError(f"{root / (IMAGENET_DIRS if imagenet else FOLDER_DIRS)[split] / classes[empty[0]]}: "
                              "none of its images could be read (all unreadable, empty, too large or linked from "
                              "outside data.root); fix or replace them")
        if split == "train":
            moments = m / len(labels[split])
    if imagenet:
        mean, std = IMAGENET_MEAN, IMAGENET_STD
    else:
        mean = [round(float(v), 6) for v in moments[:3]]
        std = [round(float(v), 6) for v in np.sqrt(np.maximum(moments[3:] - moments[:3] ** 2, 0.0))]
    with atomic_dir(out_dir) as tmp:
        files = {}
        for split in SPLITS:
            files.update(save_split(tmp, split, [it.rel for it in kept[split]], labels[split]))
        card = {
            **card_counts(classes, labels["train"], labels["test"], [3, p.image_size, p.image_size]),
            "storage": "stream", "root": p.root, "image_size": p.image_size,
            "has_masks": False, "mask_counts": {"train": 0, "test": 0}, "mask_source": None,
            "mean": mean, "std": std, "files": files, "sha256": digest.hexdigest(),
            "dataset": p.name, "source": f"image folder {p.root}, streamed",
            "views": {"train": f"RandomResizedCrop({p.image_size}) + horizontal flip",
                      "test": f"resize shorter side to {round(p.image_size * TEST_RESIZE)}, centre crop {p.image_size}"},
            "skipped": {"images": lost, "masks": 0, "first": skipped[:NAMED]},
            "name": p.name,
        }
        write_json(tmp / "card.json", card)
    return card
