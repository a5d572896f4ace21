"""Wide Residual Networks (Zagoruyko & Komodakis, "Wide Residual Networks", BMVC 2016).

WRN-d-k has depth d = 6n + 4: a 3x3 conv stem (16 channels, no BN/ReLU), three groups of n
pre-activation blocks (BN-ReLU-conv3x3-BN-ReLU-conv3x3, plus a 1x1 conv shortcut when the width changes)
at widths 16k, 32k, 64k and strides 1, 2, 2, then a final BN-ReLU, global average pooling and a linear
head. Dropout is 0 (as in RepDistiller / mdistiller). Registered: wrn_16_1, wrn_16_2, wrn_40_1, wrn_40_2.

Features: ``stem`` = the stem conv output. ``stages`` has **four** entries: the outputs of the three
groups (the pre-activation residual stream, pre-BN, exactly the reference's feats 1-3) **plus the final
ReLU(BN(group3))**. That extra tap is a deliberate deviation, as in Exp-KD's code: the reference's
last feature is pre-BN, so ``mean_hw`` of it does not reproduce the logits; with the tap ``stages[-1]``
is the map the head pools and the CAM identity holds. ``preact[i]`` follows the reference: the residual
stream after the BN that starts the next group (``groups[i+1][0].bn1``), and ``self.bn`` for the last
group and the tap; ``bn_before_relu()`` returns exactly those BNs, so ``preact[i]`` *is* their output.
Each BN runs once per forward: the next group consumes the normalised map computed for ``preact``
instead of normalising its input again. Checkpoints of the reference frameworks (``conv1`` stem,
``block1..3.layer.<i>`` blocks with ``bn1 conv1 bn2 conv2`` and a ``convShortcut``, final ``bn1``, ``fc``
head) import under ``REFERENCE_KEYS`` (models/imported.py).
"""
from __future__ import annotations

from functools import partial

import torch
import torch.nn.functional as F
from torch import nn

from .base import Classifier, Features
from .blocks import conv1x1, conv3x3, init_weights, make_features
from .imported import renamer, shifted
from .registry import register

REFERENCE_KEYS = renamer((r"^block(\d+)\.layer\.", shifted(1, -1, "groups.{}.")),
                         (r"\.convShortcut\.", ".shortcut."), (r"^bn1\.", "bn."), (r"^fc\.", "classifier."))


class WideBasic(nn.Module):
    """Pre-activation block. ``x_bn`` (= ``self.bn1(x)``) may be supplied when the caller already has it."""

    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(cin)
        self.conv1 = conv3x3(cin, cout, stride)
        self.bn2 = nn.BatchNorm2d(cout)
        self.conv2 = conv3x3(cout, cout)
        # Reference: when the width changes, the shortcut branches off *after* the first BN-ReLU.
        self.shortcut = None if cin == cout else conv1x1(cin, cout, stride)

    def forward(self, x: torch.Tensor, x_bn: torch.Tensor | None = None) -> torch.Tensor:
        act = F.relu(self.bn1(x) if x_bn is None else x_bn)
        out = self.conv2(F.relu(self.bn2(self.conv1(act))))
        return out + (x if self.shortcut is None else self.shortcut(act))


class WideResNet(Classifier):
    def __init__(self, depth: int, widen: int, num_classes: int):
        super().__init__()
        if (depth - 4) % 6 != 0:
            raise ValueError(f"WRN depth must be 6n+4, got {depth}")
        n = (depth - 4) // 6
        widths = (16, 16 * widen, 32 * widen, 64 * widen)
        self.conv1 = conv3x3(3, widths[0])
        self.groups = nn.ModuleList()
        cin = widths[0]
        for cout, stride in zip(widths[1:], (1, 2, 2)):
            self.groups.append(nn.ModuleList(WideBasic(cin if i == 0 else cout, cout, stride if i == 0 else 1)
                                             for i in range(n)))
            cin = cout
        self.bn = nn.BatchNorm2d(cin)
        self.classifier = nn.Linear(cin, num_classes)
        init_weights(self, linear="zero_bias")

    def bn_before_relu(self) -> list[nn.Module]:
        return [g[0].bn1 for g in self.groups[1:]] + [self.bn, self.bn]

    def extract(self, x: torch.Tensor) -> Features:
        stem = self.conv1(x)
        bns = self.bn_before_relu()
        h, h_bn = stem, None
        outs, pres = [], []
        n = len(self.groups) + 1
        for g, (group, bn) in enumerate(zip(self.groups, bns)):
            for i, block in enumerate(group):
                h = block(h, h_bn if i == 0 else None)
            h = self.through_slots(g, n, h)
            h_bn = bn(h)  # the next group's first BN (or the final BN): normalised once, used twice
            outs.append(h)
            pres.append(h_bn)
        outs.append(self.through_slots(n - 1, n, F.relu(h_bn)))  # Exp-KD tap: ReLU(BN(group3)), the map pooled
        pres.append(h_bn)
        return make_features(stem, outs, pres)


for _depth, _widen in ((16, 1), (16, 2), (40, 1), (40, 2)):
    register(f"wrn_{_depth}_{_widen}", REFERENCE_KEYS)(partial(WideResNet, _depth, _widen))
