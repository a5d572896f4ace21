"""Device auto-detection: the only place in kdlens that decides where tensors live."""
from __future__ import annotations

import os

import torch


def device() -> torch.device:
    """CUDA when present (and not disabled with KDLENS_DEVICE=cpu), else CPU."""
    forced = os.environ.get("KDLENS_DEVICE")
    if forced:
        return torch.device(forced)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")
