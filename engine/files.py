"""Small atomic file helpers: a stage's outputs are complete or absent."""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any


def write_json(path: str | Path, obj: Any) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(json.dumps(obj, indent=2, sort_keys=True) + "\n")
    os.replace(tmp, path)


def read_json(path: str | Path) -> Any:
    from .errors import KdlensError

    path = Path(path)
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise KdlensError(f"{path}: missing; run the stage that writes it (dvc repro)") from None
    except json.JSONDecodeError as e:
        raise KdlensError(f"{path}: corrupt JSON ({e}); re-run the stage that writes it") from None


def sha256_file(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()
