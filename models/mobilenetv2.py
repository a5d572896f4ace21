"""MobileNetV2 (Sandler et al., CVPR 2018), the half-width CIFAR variant ``mobile_half`` of RepDistiller.

Inverted residual blocks (1x1 expand by t -> 3x3 depthwise -> 1x1 linear projection, BN after each conv,
ReLU after the first two, identity shortcut when stride 1 and widths agree). Unlike the paper, every
block keeps its 1x1 expansion conv, even for t = 1 (as in the reference, which the parameter count
depends on). Settings (t, c, n, s): (1,16,1,1), (6,24,2,1), (6,32,3,2), (6,64,4,2), (6,96,3,1),
(6,160,3,2), (6,320,1,1) with c scaled by width 0.5; stem 3x3 conv stride 2 to 16 channels; then a 1x1
conv + BN + ReLU to 1280 channels, global average pooling and ``Linear(1280, N)``.

Features: ``stem`` (16, 16, 16); ``stages`` = the reference's four tapped points (after settings 2, 3, 5
and 7: (12,16,16), (16,8,8), (48,4,4), (160,2,2)) **plus the 1x1-conv-to-1280 output (1280, 2, 2)**.
That last tap is a deliberate deviation, as in Exp-KD's code, so that ``stages[-1]`` is the map the
head pools. Block outputs are linear (no ReLU), so their ``preact`` equals the stage map; the tap's
``preact`` is its BN output. The head is a plain ``nn.Linear`` named ``classifier``.
Checkpoints of the reference frameworks (``conv1`` stem Sequential, ``blocks.<setting>.<block>.conv.<k>``
inverted residuals, ``conv2`` Sequential to 1280, ``classifier.0``) import under ``REFERENCE_KEYS``
(models/imported.py); the reference's per-setting blocks are regrouped into the four stages.
"""
from __future__ import annotations

import re

from torch import nn

from .blocks import ConvBNAct, PreactBlock, Stage, StagedClassifier, init_weights
from .imported import renamer
from .registry import register

# (t, c, n, s); t = 6 is the reference's T
SETTINGS = ((1, 16, 1, 1), (6, 24, 2, 1), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2),
            (6, 320, 1, 1))
TAPS = (2, 3, 5, 7)  # number of settings consumed at the end of each stage

# Reference (setting, block) -> kdlens (stage, block); reference ``conv.<k>`` -> kdlens's ConvBNAct parts.
_PLACE = {(s, j): (stage, sum(SETTINGS[p][2] for p in range(start, s)) + j)
          for stage, (start, end) in enumerate(zip((0, *TAPS), TAPS)) for s in range(start, end)
          for j in range(SETTINGS[s][2])}
_PART = {"0": "expand.conv", "1": "expand.bn", "3": "depthwise.conv", "4": "depthwise.bn", "6": "project.conv",
         "7": "project.bn"}


def _block_key(m: re.Match) -> str:
    """``blocks.<s>.<j>.conv.<k>.`` in kdlens's names; left as it is if not of mobile_half (a misfit names it)."""
    place, part = _PLACE.get((int(m.group(1)), int(m.group(2)))), _PART.get(m.group(3))
    if place is None or part is None:
        return m.group(0)
    return f"stages.{place[0]}.{place[1]}.{part}."


REFERENCE_KEYS = renamer((r"^conv1\.0\.", "stem.conv."), (r"^conv1\.1\.", "stem.bn."),
                         (r"^blocks\.(\d+)\.(\d+)\.conv\.(\d+)\.", _block_key),
                         (r"^conv2\.0\.", "tap.conv."), (r"^conv2\.1\.", "tap.bn."),
                         (r"^classifier\.0\.", "classifier."))


class InvertedResidual(PreactBlock):
    def __init__(self, cin: int, cout: int, stride: int, expand: int):
        super().__init__()
        mid = cin * expand
        self.expand = ConvBNAct(cin, mid, 1)
        self.depthwise = ConvBNAct(mid, mid, 3, stride=stride, groups=mid)
        self.project = ConvBNAct(mid, cout, 1, act=False)
        self.residual = stride == 1 and cin == cout

    def forward_pre(self, x, x_pre=None):
        out = self.project(self.depthwise(self.expand(x)))
        if self.residual:
            out = out + x
        return out, out

    @property
    def out_bn(self) -> nn.BatchNorm2d:
        return self.project.bn


class MobileNetV2(StagedClassifier):
    def __init__(self, num_classes: int, width: float = 0.5, last_channel: int = 1280):
        cin = int(32 * width)
        stem = ConvBNAct(3, cin, 3, stride=2)
        blocks_per_setting = []
        for t, c, n, s in SETTINGS:
            cout, blocks = int(c * width), []
            for i in range(n):
                blocks.append(InvertedResidual(cin, cout, s if i == 0 else 1, t))
                cin = cout
            blocks_per_setting.append(blocks)
        stages, start = [], 0
        for end in TAPS:
            stages.append(Stage(*[b for blocks in blocks_per_setting[start:end] for b in blocks]))
            start = end
        super().__init__(stem, stages, cin, num_classes, tap=ConvBNAct(cin, last_channel, 1))
        init_weights(self, linear="normal")


@register("MobileNetV2", REFERENCE_KEYS)
def mobilenetv2_half(num_classes: int) -> MobileNetV2:
    """``mobile_half``: MobileNetV2 with width 0.5, expansion 6 (0.81M parameters at 100 classes)."""
    return MobileNetV2(num_classes, width=0.5)
