"""Datasets: each is built into the compact on-disk format of ``store.py`` by ``prepare``.

A builder takes the ``data`` params and returns ``(train, test, classes, info)``; ``BUILDERS`` maps
``data.name`` to its builder. Data too large for memory (``imagenet``, a folder with ``data.storage:
stream``) is indexed instead (``index.py``) and streamed from disk (``stream.py``); ``loader_for`` gives
either kind of split its loader. Nothing is logged here: stages do the tracking.
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable

from core.errors import KdlensError
from dataset.params import DataParams
from .cifar import load_cifar
from .folder import build_folder
from .index import build_index
from .loader import BatchLoader, loader_for
from .scenes import CLASSES as SCENES_CLASSES
from .scenes import build_scenes
from .store import Prepared, Split, load_prepared, save_prepared
from .stream import StreamSplit

Builder = Callable[[DataParams], tuple[Split, Split, list[str], dict]]

BUILDERS: dict[str, Builder] = {
    "scenes": lambda p: build_scenes(p.scenes),
    "cifar10": lambda p: load_cifar("cifar10", p.root, p.download),
    "cifar100": lambda p: load_cifar("cifar100", p.root, p.download),
    "folder": build_folder,
}


def expected_shape(p: DataParams) -> tuple[int | None, int]:
    """(classes, image side) that ``prepare`` will give, known from the params alone; classes is None for
    a folder, whose class folders decide."""
    if p.name == "scenes":
        return len(SCENES_CLASSES), p.scenes.image_size
    if p.name in ("cifar10", "cifar100"):
        return int(p.name.removeprefix("cifar")), 32
    return None, p.image_size


def prepare(p: DataParams, out_dir: str | Path) -> dict:
    """Build the dataset ``p.name`` (or its index, for streamed data) and write it to ``out_dir``; returns
    its card."""
    if p.streams:
        return build_index(p, out_dir)
    builder = BUILDERS.get(p.name)
    if builder is None:
        raise KdlensError(f"data.name: {p.name} is streamed from disk; set data.storage: stream or null")
    train, test, classes, info = builder(p)
    return save_prepared(out_dir, train, test, classes, {**info, "name": p.name})


__all__ = ["BUILDERS", "BatchLoader", "Prepared", "Split", "StreamSplit", "expected_shape", "load_prepared",
           "loader_for", "prepare", "save_prepared"]
