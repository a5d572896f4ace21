"""Small tensor helpers shared by several methods (not a method itself)."""
from __future__ import annotations

import torch
import torch.nn.functional as F


def pool_to(x: torch.Tensor, size: int) -> torch.Tensor:
    """Adaptive-average-pool a [B,C,H,W] map down to size x size (no-op when already that size)."""
    return x if x.shape[-1] == size and x.shape[-2] == size else F.adaptive_avg_pool2d(x, size)


def align_spatial(s: torch.Tensor, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Pool the larger of two maps to the smaller one's spatial size."""
    h = min(s.shape[-1], t.shape[-1])
    return pool_to(s, h), pool_to(t, h)


def warmup_factor(epoch: int, warmup_epochs: int) -> float:
    """min(epoch / warmup, 1) with epochs counted from 1 (DKD, ReviewKD, Exp-KD loss warm-ups)."""
    return 1.0 if warmup_epochs <= 0 else min(epoch / warmup_epochs, 1.0)
