"""letKD's supervision on disk: ``supervision.npz`` (deterministic bytes: sorted members, fixed zip
timestamps) plus ``card.json`` with every array's shape and dtype, the grids, the npz's SHA-256 and the
build statistics. ``load_supervision`` checks all of it and reports a missing or corrupt file in one line.
The method reads it through this module alone, so a student's code does not reach the building code."""
from __future__ import annotations

import json
import zipfile
from pathlib import Path

import numpy as np

from core.errors import KdlensError
from core.files import atomic_dir, sha256_file, write_json, write_npz

NPZ = "supervision.npz"
CARD = "card.json"
FORMAT = 1
# What every supervision file holds (name -> number of dimensions); the loader checks these.
ARRAYS = {
    "centroids": 2,  # [k, C_penult] float32: k-means centroids of the teacher's last-stage locations
    "centroid_counts": 1,  # [k] int64: locations assigned to each centroid
    "kmeans_inertia": 1,  # [<= iterations] float64: the k-means objective at each iteration
    "lda_scalings": 2,  # [C_inter, lda_dim] float32: z = (f - lda_xbar) @ lda_scalings
    "lda_xbar": 1,  # [C_inter] float32
    "sub_centers": 2,  # [num_classes * subclasses, lda_dim] float32, class-major
    "sub_prototypes": 2,  # [num_classes * subclasses, lda_dim] float32: mean z of each sub-class
    "sub_counts": 1,  # [num_classes * subclasses] int64: locations in each sub-class
    "decision": 2,  # [num_classes * subclasses]^2 float32: teacher decision matrix, rows sum to 1
}


def save_supervision(out_dir: str | Path, arrays: dict[str, np.ndarray], info: dict) -> dict:
    """Write ``supervision.npz`` and ``card.json`` into ``out_dir`` atomically; returns the card."""
    missing = sorted(set(ARRAYS) - set(arrays))
    if missing:
        raise ValueError(f"supervision arrays missing: {missing}")
    with atomic_dir(out_dir) as tmp:
        write_npz(tmp / NPZ, arrays)
        card = {**info, "file": NPZ, "sha256": sha256_file(tmp / NPZ),
                "arrays": {k: {"shape": list(v.shape), "dtype": str(v.dtype)} for k, v in sorted(arrays.items())}}
        write_json(tmp / CARD, card)
    return card


def load_supervision(sup_dir: str | Path) -> dict:
    """``{name: array for ARRAYS} | {"card": card}``; a missing or corrupt file is one KdlensError line."""
    sup_dir = Path(sup_dir)
    card_path, npz_path = sup_dir / CARD, sup_dir / NPZ
    fix = "re-run: dvc repro -f build_supervision"
    try:
        card = json.loads(card_path.read_text())
    except FileNotFoundError:
        raise KdlensError(f"{card_path}: missing; run the supervision stage first "
                          "(dvc repro build_supervision)") from None
    except json.JSONDecodeError as e:
        raise KdlensError(f"{card_path}: corrupt JSON ({e}); {fix}") from None
    if not isinstance(card, dict) or card.get("format") != FORMAT or not isinstance(card.get("arrays"), dict):
        raise KdlensError(f"{card_path}: not a kdlens supervision card (format {FORMAT}); {fix}")
    if not npz_path.is_file():
        raise KdlensError(f"{npz_path}: missing; {fix}")
    if sha256_file(npz_path) != card.get("sha256"):
        raise KdlensError(f"{npz_path}: checksum does not match {card_path.name} (corrupt or replaced); {fix}")
    try:
        # Our own file object: np.load leaves the file it opened unclosed when the zip is corrupt.
        with open(npz_path, "rb") as f, np.load(f, allow_pickle=False) as npz:
            arrays = {name: npz[name] for name in ARRAYS}
    except (KeyError, ValueError, OSError, EOFError, zipfile.BadZipFile) as e:
        why = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise KdlensError(f"{npz_path}: corrupt ({why}); {fix}") from None
    for name, arr in arrays.items():
        expected = card["arrays"].get(name, {}).get("shape")
        if list(arr.shape) != expected or arr.ndim != ARRAYS[name]:
            raise KdlensError(f"{npz_path}: {name} has shape {list(arr.shape)}, card says {expected}; {fix}")
    return {**arrays, "card": card}
