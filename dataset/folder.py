"""Your own images: ``data.root/{train,test}/<class>/*`` (torchvision's ImageFolder layout), optional masks.

Each image is decoded with Pillow, converted to RGB and squashed (aspect ratio not kept) to
``data.image_size`` × ``data.image_size`` with Pillow's antialiased bilinear filter; JPEGs are first
decoded at a reduced scale no smaller than that. Squashing maps the whole frame, so masks keep lining up:

* a PNG tree (``data.masks`` a directory) mirrors the images, ``<masks>/train/<class>/<name>.png`` for
  ``train/<class>/<name>.<ext>``; non-zero = foreground (palette PNGs by index, alpha ignored), resized
  with nearest neighbour whatever its size;
* a CSV (``data.masks`` a ``.csv``) has the header ``path,x0,y0,x1,y1``: ``path`` relative to
  ``data.root``, a box in the original image's pixels (x1, y1 exclusive), scaled to the resized grid and
  rounded outwards so it never vanishes; several rows for one image are united.

Images without a mask are flagged in ``Split.has_mask``. The masks must lie inside ``data.root``: that
is the one path DVC watches (dvc.yaml). Classes and files are taken in sorted order and decoded in a
thread pool (Pillow releases the GIL while decoding and resizing), so the same folder gives the same
bytes. A missing split, an empty class folder, classes that differ between train and test, or a mask
that matches no image raise at once; an unreadable or empty file is skipped and reported in the info.

Two more kinds of file are skipped unread and reported the same way:

* an image or mask that would decode to more than ``data.max_pixels`` pixels (a JPEG at its reduced
  scale). ``Image.open`` reads only the header, so this is checked before decoding: a few KB of PNG can
  inflate to gigabytes, several decode at once, and each is squashed to ``data.image_size`` anyway.
  Pillow's own, higher limit is a skip too;
* a file or class folder that is a symlink resolving outside ``data.root``, all that the dataset may
  read (the one path DVC watches). Such a class folder is not walked; such a split folder raises. Links
  inside ``data.root`` are followed, but symlinked folders below a class folder are never walked.
"""
from __future__ import annotations

import csv
import math
import os
import warnings
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import partial
from pathlib import Path, PurePosixPath

import numpy as np
from PIL import Image
from tqdm import tqdm

from core.errors import KdlensError, one_line
from dataset.params import DataParams
from .store import SPLITS, Split

IMAGE_SUFFIXES = (".bmp", ".gif", ".jpeg", ".jpg", ".pgm", ".png", ".ppm", ".tif", ".tiff", ".webp")
BOX_HEADER = ["path", "x0", "y0", "x1", "y1"]
NAMED = 10  # skipped files named in the card (all are counted)
FOLDER_DIRS = {"train": "train", "test": "test"}  # each split's folder under data.root
WORKERS = min(8, os.cpu_count() or 1)

Box = tuple[float, float, float, float]


@dataclass(frozen=True)
class Item:
    rel: str  # posix path under data.root, e.g. "train/cat/001.jpg"
    label: int
    mask: Path | tuple[Box, ...] | None = None  # a PNG, the boxes, or no mask


def _files(folder: Path) -> list[Path]:
    """Every file under ``folder`` (recursive, hidden names skipped), sorted by path."""
    return sorted(f for f in folder.rglob("*") if f.is_file() and not any(
        part.startswith(".") for part in f.relative_to(folder).parts))


def _outside(path: Path, root: Path) -> str | None:
    """What is wrong with ``path`` if it resolves (through a symlink) outside ``root``; None inside."""
    target = path.resolve()
    return None if target.is_relative_to(root.resolve()) else f"{path}: a symlink to {target}, outside data.root"


def scan(root: Path, dirs: dict[str, str] = FOLDER_DIRS, name: str = "folder"
         ) -> tuple[list[str], dict[str, list[Item]], list[str]]:
    """The class names, every image file per split, and the class folders skipped as links outside
    ``root``; the folder's structure is checked here. ``dirs``: each split's folder under ``root``."""
    if not root.is_dir():
        raise KdlensError(f"data.root: {root} is not a directory; data.name: {name} reads "
                          f"{root}/{dirs['train']}/<class>/* and {root}/{dirs['test']}/<class>/*")
    names, skipped = {}, []
    for split in SPLITS:
        folder = root / dirs[split]
        if not folder.is_dir():
            raise KdlensError(f"data.root: {folder} is missing; put each class's images in {folder}/<class>/")
        if why := _outside(folder, root):
            raise KdlensError(f"{why}; a split must lie inside data.root, so point data.root at the real folder")
        names[split] = []
        for d in sorted(folder.iterdir()):
            if d.is_dir() and not d.name.startswith("."):
                # rglob walks the folder it starts from even when that is a link, so check the class folder
                # here; it does not descend into symlinked folders below it.
                if why := _outside(d, root):
                    skipped.append(f"{why}; not walked (copy the folder into data.root)")
                else:
                    names[split].append(d.name)
    # Name the skipped links where they explain the error: a skipped class folder looks like a missing one.
    links = f" (skipped: {'; '.join(skipped)})" if skipped else ""
    train_dir, test_dir = root / dirs["train"], root / dirs["test"]
    if not names["train"]:
        raise KdlensError(f"{train_dir}: no class folders; put each class's images in {train_dir}/<class>/{links}")
    if names["train"] != names["test"]:
        only = {s: sorted(set(names[s]) - set(names[o])) for s, o in (("train", "test"), ("test", "train"))}
        raise KdlensError(f"{test_dir}: classes differ from {train_dir} (only in train: "
                          f"{', '.join(only['train']) or '-'}; only in test: {', '.join(only['test']) or '-'}); "
                          f"give both splits the same class folders{links}")
    items = {}
    for split in SPLITS:
        items[split] = []
        for label, name in enumerate(names["train"]):
            folder = root / dirs[split] / name
            found = [f for f in _files(folder) if f.suffix.lower() in IMAGE_SUFFIXES]
            if not found:
                raise KdlensError(f"{folder}: empty class folder (no {'/'.join(IMAGE_SUFFIXES)} file); add images "
                                  "or remove the class from both splits")
            items[split] += [Item(f.relative_to(root).as_posix(), label) for f in found]
    return names["train"], items, skipped


def _png_masks(masks: Path, rels: set[str], root: Path) -> dict[str, Path]:
    """Image path -> its PNG mask, for a tree mirroring data.root."""
    by_stem: dict[str, list[str]] = {}
    for rel in rels:
        by_stem.setdefault(PurePosixPath(rel).with_suffix("").as_posix(), []).append(rel)
    out = {}
    for f in _files(masks):
        stem = f.relative_to(masks).with_suffix("").as_posix()
        if f.suffix.lower() != ".png":
            raise KdlensError(f"{f}: not a PNG; the mask tree data.masks holds one .png per image")
        if stem not in by_stem:
            raise KdlensError(f"{f}: matches no image (looked for {root}/{stem}.<ext>); rename or remove it")
        out.update(dict.fromkeys(by_stem[stem], f))
    return out


def _csv_boxes(path: Path, rels: set[str], root: Path) -> dict[str, tuple[Box, ...]]:
    """Image path -> its boxes, from a CSV with the header path,x0,y0,x1,y1."""
    with open(path, newline="") as f:
        rows = list(csv.reader(f))
    header = [h.strip() for h in rows[0]] if rows else []
    if header != BOX_HEADER:
        raise KdlensError(f"{path}: the first row must be the header {','.join(BOX_HEADER)}, got "
                          f"{','.join(header) or 'nothing'}")
    out: dict[str, list[Box]] = {}
    for line, row in enumerate(rows[1:], start=2):
        if not any(v.strip() for v in row):
            continue
        if len(row) != len(BOX_HEADER):
            raise KdlensError(f"{path}:{line}: {len(row)} fields, expected {len(BOX_HEADER)} ({','.join(BOX_HEADER)})")
        rel = PurePosixPath(row[0].strip()).as_posix()
        try:
            x0, y0, x1, y1 = (float(v) for v in row[1:])
        except ValueError:
            raise KdlensError(f"{path}:{line}: coordinates must be numbers, got {','.join(row[1:])}") from None
        if not (x0 < x1 and y0 < y1 and math.isfinite(x1 - x0 + y1 - y0)):
            raise KdlensError(f"{path}:{line}: a box needs finite x0 < x1 and y0 < y1, got {','.join(row[1:])}")
        if rel not in rels:
            raise KdlensError(f"{path}:{line}: {rel} matches no image under {root}; paths are relative to "
                              "data.root, e.g. train/<class>/<file>")
        out.setdefault(rel, []).append((x0, y0, x1, y1))
    return {rel: tuple(boxes) for rel, boxes in out.items()}


def find_masks(p: DataParams, root: Path, items: dict[str, list[Item]]) -> tuple[dict[str, list[Item]], dict | None]:
    """``items`` with their masks attached, and the card's description of the mask source (None: no masks)."""
    if p.masks is None:
        return items, None
    masks = Path(p.masks)
    if not masks.exists():
        raise KdlensError(f"data.masks: {masks} does not exist; point it at a mask tree or a .csv of boxes, "
                          "or set it to null")
    if masks.resolve() == root.resolve() or not masks.resolve().is_relative_to(root.resolve()):
        raise KdlensError(f"data.masks: {masks} must lie inside data.root ({root}), the one path DVC watches "
                          "for this stage; move the masks there, e.g. to data.root/masks")
    rels = {it.rel for split in items.values() for it in split}
    if masks.is_dir():
        found, kind = _png_masks(masks, rels, root), "PNG tree"
    elif masks.suffix.lower() == ".csv":
        found, kind = _csv_boxes(masks, rels, root), "CSV boxes"
    else:
        raise KdlensError(f"data.masks: {masks} is neither a directory of PNG masks nor a .csv of boxes")
    if not found:
        raise KdlensError(f"data.masks: {masks} holds no mask; add masks or set data.masks: null")
    attached = {split: [Item(it.rel, it.label, found.get(it.rel)) for it in split_items]
                for split, split_items in items.items()}
    return attached, {"path": p.masks, "kind": kind}


def _mask_pixels(im) -> np.ndarray:
    """bool [H, W]: non-zero = foreground, in any channel but alpha (a palette PNG by its indices)."""
    a = np.asarray(im)
    if "A" in im.getbands():  # alpha is always the last band
        a = a[..., :-1]
    return a.reshape(*a.shape[:2], -1).any(axis=-1)


def _box_mask(boxes: tuple[Box, ...], width: int, height: int, size: int) -> np.ndarray:
    m = np.zeros((size, size), np.uint8)
    for x0, y0, x1, y1 in boxes:
        c0, c1 = (min(max(f(v * size / width), 0), size) for f, v in ((math.floor, x0), (math.ceil, x1)))
        r0, r1 = (min(max(f(v * size / height), 0), size) for f, v in ((math.floor, y0), (math.ceil, y1)))
        m[r0:r1, c0:c1] = 1
    return m


def _too_large(im, max_pixels: int) -> str | None:
    """Why ``im`` (opened, not yet decoded) is not decoded: over ``max_pixels``; None if it fits."""
    width, height = im.size
    if width * height <= max_pixels:
        return None
    return f"too large ({width}x{height} = {width * height:,} pixels to decode, over data.max_pixels: {max_pixels:,})"


def decode(root: Path, size: int, max_pixels: int,
           item: Item) -> tuple[np.ndarray | None, np.ndarray | None, str | None]:
    """(image uint8 [3, S, S], mask uint8 [S, S] or None, why something was skipped or None).

    An unreadable, empty or too large image, or one linked from outside ``root``, gives no image; such a
    mask PNG keeps the image without a mask.
    """
    path = root / item.rel
    try:
        if why := _outside(path, root):
            return None, None, f"{why}; not read (copy the file into data.root)"
        if path.stat().st_size == 0:
            return None, None, f"{path}: empty file"
        with Image.open(path) as im:
            width, height = im.size
            im.draft("RGB", (size, size))  # JPEG only: decode at a reduced scale, still >= size
            if why := _too_large(im, max_pixels):  # after the draft: that is the size actually decoded
                return None, None, f"{path}: {why}; shrink it or raise data.max_pixels"
            image = np.asarray(im.convert("RGB").resize((size, size), Image.Resampling.BILINEAR))
    except Image.DecompressionBombError as e:  # raised by Image.open, before any decoding
        return None, None, f"{path}: too large for Pillow to open ({one_line(e)})"
    except Exception as e:  # a decoder fails in many ways on bad bytes: every one means "unreadable"
        return None, None, f"{path}: unreadable ({one_line(e)})"
    image = np.ascontiguousarray(image.transpose(2, 0, 1))
    if item.mask is None:
        return image, None, None
    if isinstance(item.mask, tuple):
        return image, _box_mask(item.mask, width, height, size), None
    try:
        if why := _outside(item.mask, root):
            return image, None, f"{why}; not read, image kept without a mask"
        with Image.open(item.mask) as im:
            if why := _too_large(im, max_pixels):
                return image, None, f"{item.mask}: mask {why}, image kept without one"
            fg = Image.fromarray(_mask_pixels(im).astype(np.uint8))
    except Exception as e:  # as above
        return image, None, f"{item.mask}: unreadable mask, image kept without one ({one_line(e)})"
    return image, (np.asarray(fg.resize((size, size), Image.Resampling.NEAREST)) > 0).astype(np.uint8), None


def _decode_split(root: Path, size: int, max_pixels: int, items: list[Item], with_masks: bool,
                  desc: str) -> tuple[Split, list[str]]:
    """Decode one split in order (in parallel); returns it and what was skipped."""
    # Image.open warns about images over Pillow's MAX_IMAGE_PIXELS (~89 MP). The cap in decode decides
    # instead (it is lower, and a JPEG counts after its draft), so the warning is silenced rather than
    # repeated on stderr or, under -W error, made an "unreadable" skip. Warning filters are process-wide:
    # set once here around the pool, never in the worker threads.
    with warnings.catch_warnings(), ThreadPoolExecutor(WORKERS) as pool:
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        done = list(tqdm(pool.map(partial(decode, root, size, max_pixels), items), total=len(items), desc=desc,
                         disable=None))
    kept = [(it, img, mask) for it, (img, mask, _) in zip(items, done) if img is not None]
    skipped = [why for _, _, why in done if why is not None]
    images = np.stack([img for _, img, _ in kept]) if kept else np.zeros((0, 3, size, size), np.uint8)
    labels = np.array([it.label for it, _, _ in kept], np.int64)
    if not with_masks:
        return Split(images, labels), skipped
    has_mask = np.array([mask is not None for _, _, mask in kept], bool)
    masks = np.zeros((len(kept), size, size), np.uint8)
    for i, (_, _, mask) in enumerate(kept):
        if mask is not None:
            masks[i] = mask
    return Split(images, labels, masks, None if has_mask.all() else has_mask), skipped


def build_folder(p: DataParams) -> tuple[Split, Split, list[str], dict]:
    """The ``folder`` dataset: ``(train, test, classes, info)``; info records what was skipped and the masks."""
    root = Path(p.root)
    classes, items, skipped = scan(root)
    items, mask_source = find_masks(p, root, items)
    lost = len(skipped)  # the class folders skipped by scan count as skipped images
    splits = {}
    for split in SPLITS:
        splits[split], why = _decode_split(root, p.image_size, p.max_pixels, items[split], mask_source is not None,
                                           f"decoding {split}")
        skipped += why
        empty = [classes[c] for c in np.flatnonzero(np.bincount(splits[split].labels, minlength=len(classes)) == 0)]
        if empty:
            raise KdlensError(f"{root / split / empty[0]}: none of its images could be read (all unreadable, "
                              "empty, too large or linked from outside data.root); fix or replace them")
    lost += sum(len(items[s]) - len(splits[s].labels) for s in SPLITS)
    info = {
        "dataset": "folder",
        "source": f"image folder {p.root}",
        "image_size": p.image_size,
        "resize": "squashed with Pillow's antialiased bilinear filter; PNG masks nearest, boxes scaled outwards",
        "skipped": {"images": lost, "masks": len(skipped) - lost, "first": skipped[:NAMED]},
        "mask_source": mask_source,
    }
    return splits["train"], splits["test"], classes, info
