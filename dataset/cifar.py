"""CIFAR-10 and CIFAR-100 through torchvision, converted to the compact ``Split`` format.

torchvision checks the MD5 sums of the downloaded batch files; that check is kept as it is. CIFAR has
no object masks, so ``masks`` is None.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from core.errors import KdlensError, one_line
from .store import Split

ORIGIN = "https://www.cs.toronto.edu/~kriz/cifar.html"
_PRETTY = {"cifar10": "CIFAR-10", "cifar100": "CIFAR-100"}


def _dataset_classes() -> dict:
    # Imported here so that importing the dataset package (e.g. for scenes) does not pull in torchvision.
    from torchvision.datasets import CIFAR10, CIFAR100

    return {"cifar10": CIFAR10, "cifar100": CIFAR100}


def load_cifar(name: str, root: str, download: bool) -> tuple[Split, Split, list[str], dict]:
    """Load CIFAR ``name`` ("cifar10" or "cifar100") from ``root`` (``data.root``).

    Returns ``(train, test, classes, info)``. Missing or corrupt files, or a failed download, raise a
    one-line KdlensError naming ``data.root`` and what to do.
    """
    classes_by_name = _dataset_classes()
    if name not in classes_by_name:
        raise KdlensError(f"data.name: {name!r} is not a CIFAR dataset; choose one of: {', '.join(classes_by_name)}")
    cls = classes_by_name[name]
    path = Path(root).expanduser().resolve()
    folder = path / cls.base_folder
    pretty = _PRETTY[name]
    try:
        # The first construction downloads if asked; the second finds the files already in place.
        train_ds = cls(str(path), train=True, download=download)
        test_ds = cls(str(path), train=False, download=False)
    except Exception as e:
        if download:
            # A download can fail in many ways (no network, DNS, TLS, HTTP, a bad archive): all are one line.
            raise KdlensError(
                f"data.root: downloading {pretty} into {path} failed ({one_line(e)}); check the network, or "
                f"put {cls.base_folder}/ under {path} and set data.download: false"
            ) from None
        if not (isinstance(e, RuntimeError) and ("not found" in str(e) or "corrupted" in str(e))):
            raise
        if folder.is_dir():
            raise KdlensError(
                f"data.root: {folder} is incomplete or corrupt (torchvision's MD5 check failed); delete it and "
                f"set data.download: true on a machine with internet, or copy a verified {cls.base_folder}/ there"
            ) from None
        raise KdlensError(
            f"data.root: {pretty} not found in {path} (no {cls.base_folder}/); set data.download: true on a "
            f"machine with internet, or put {cls.base_folder}/ under {path}"
        ) from None

    def split(ds) -> Split:
        images = np.ascontiguousarray(np.asarray(ds.data, dtype=np.uint8).transpose(0, 3, 1, 2))  # NHWC -> NCHW
        return Split(images=images, labels=np.asarray(ds.targets, dtype=np.int64), masks=None)

    info = {"dataset": name, "source": f"torchvision.datasets.{cls.__name__} ({ORIGIN})"}
    return split(train_ds), split(test_ds), [str(c) for c in train_ds.classes], info
