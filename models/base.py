"""The one contract every architecture follows, so no method ever special-cases a family.

``forward(x)`` returns ``(logits, Features)``:

* ``stem``   - output of the input stem (post-activation).
* ``stages`` - output of every stage, shallow to deep, post-activation. ``stages[-1]`` is the final
  pre-pooling map (the CAM feature): global average pooling of it is exactly ``pooled``.
* ``preact`` - the same maps taken before the stage's final activation (for OFD / ReviewKD / AB).
* ``pooled`` - the embedding fed to ``model.classifier``.

Every model has ``model.classifier``: an ``nn.Linear`` whose ``in_features`` equals the channel count
of ``stages[-1]``, so ``mean_hw(stages[-1]) @ W.T + b == logits`` (CAM-based methods rely on it).
Families whose reference code taps a pre-BN map (WRN) or a narrower map (MobileNetV2, ShuffleNetV2)
expose the post-BN-ReLU / final 1x1-conv map instead, as Exp-KD does (spec A4, A7).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn


@dataclass
class Features:
    stem: torch.Tensor
    stages: list[torch.Tensor]
    preact: list[torch.Tensor]
    pooled: torch.Tensor


class Classifier(nn.Module):
    """Base class: subclasses implement ``extract(x) -> Features``; the head is shared."""

    classifier: nn.Linear

    def extract(self, x: torch.Tensor) -> Features:  # pragma: no cover - abstract
        raise NotImplementedError

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, Features]:
        feats = self.extract(x)
        return self.classifier(feats.pooled), feats

    def bn_before_relu(self) -> list[nn.Module]:
        """The BatchNorm that produces each stage's pre-activation map (OFD's margins). Optional."""
        raise NotImplementedError(f"{type(self).__name__} does not expose its pre-ReLU BatchNorms")


def feature_shapes(model: Classifier, input_size: int = 32, channels: int = 3) -> dict:
    """Shapes (without batch) of every named feature, found by one dummy forward in eval mode."""
    was_training = model.training
    model.eval()
    try:
        device = next(model.parameters()).device
        with torch.no_grad():
            logits, feats = model(torch.zeros(2, channels, input_size, input_size, device=device))
    finally:
        model.train(was_training)
    return {
        "stem": tuple(feats.stem.shape[1:]),
        "stages": [tuple(f.shape[1:]) for f in feats.stages],
        "preact": [tuple(f.shape[1:]) for f in feats.preact],
        "pooled": tuple(feats.pooled.shape[1:]),
        "logits": tuple(logits.shape[1:]),
    }


def count_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())
