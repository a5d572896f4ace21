"""Checkpoints: a dict of state dicts plus JSON-compatible meta, written atomically, loaded safely.

Loading always uses ``weights_only=True`` (no arbitrary pickle), and a truncated or foreign file is
reported as one line naming it.
"""
from __future__ import annotations

import os
from pathlib import Path

import torch

from .errors import KdlensError, first_sentence


class UnreadableCheckpoint(KdlensError):
    """A checkpoint file that cannot be loaded: ``problem`` says what is wrong with it, the message adds
    the fix (delete it and re-run); a caller that can do without the file reports ``problem`` alone."""

    def __init__(self, problem: str):
        super().__init__(f"{problem}; delete it and re-run the stage that writes it")
        self.problem = problem


def save(path: str | Path, state: dict) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    torch.save(state, tmp)
    os.replace(tmp, path)  # a killed process leaves the old file or the new one, never half of one


def load(path: str | Path, map_location="cpu", required: tuple[str, ...] = ()) -> dict:
    path = Path(path)
    if not path.exists():
        raise KdlensError(f"{path}: checkpoint not found; run the stage that writes it (dvc repro)")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # torch raises several types for truncated/foreign files
        raise UnreadableCheckpoint(f"{path}: corrupt or not a kdlens checkpoint ({first_sentence(e)})") from None
    if not isinstance(state, dict) or any(k not in state for k in required):
        raise UnreadableCheckpoint(f"{path}: not a kdlens checkpoint (expected keys {list(required)})")
    return state
