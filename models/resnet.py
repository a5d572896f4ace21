"""CIFAR ResNets (He et al., "Deep Residual Learning for Image Recognition", CVPR 2016, section 4.2).

Depth = 6n + 2: a 3x3 conv stem, three stages of n ``BasicBlock``s (two 3x3 convs each) at strides
1, 2, 2, then global average pooling and a linear head. Filters are [16, 16, 32, 64] (resnet8 ... resnet110,
n = 1, 2, 3, 5, 7, 9, 18) or four times wider, [32, 64, 128, 256], for resnet8x4 / resnet32x4 (the
RepDistiller / mdistiller variants). Shapes changes use a 1x1 conv + BN projection shortcut.

Features: ``stem`` = ReLU(BN(conv)) at 32x32; ``stages`` = the three stage outputs (post-ReLU), the last
being the CAM map (64 or 256 channels, 8x8); ``preact`` = the residual sums before each stage's final ReLU.
Checkpoints of the reference frameworks (``conv1``/``bn1`` stem, ``layer1..3`` of blocks with
``conv1 bn1 conv2 bn2`` and a ``downsample`` (conv, BN) projection, ``fc`` head) import under
``REFERENCE_KEYS`` (models/imported.py). Deviation from the reference: the head pools with a global mean instead of a fixed ``AvgPool2d(8)``
(identical for 32x32 inputs).
"""
from __future__ import annotations

from functools import partial

from .blocks import BasicBlock, ConvBNAct, Stage, StagedClassifier, init_weights
from .imported import renamer, shifted
from .registry import register

REFERENCE_KEYS = renamer((r"^conv1\.", "stem.conv."), (r"^bn1\.", "stem.bn."),
                         (r"^layer(\d+)\.", shifted(1, -1, "stages.{}.")), (r"\.downsample\.", ".shortcut."),
                         (r"^fc\.", "classifier."))


class CifarResNet(StagedClassifier):
    def __init__(self, depth: int, filters: tuple[int, int, int, int], num_classes: int):
        if (depth - 2) % 6 != 0:
            raise ValueError(f"CIFAR ResNet depth must be 6n+2, got {depth}")
        n = (depth - 2) // 6
        stages, cin = [], filters[0]
        for planes, stride in zip(filters[1:], (1, 2, 2)):
            blocks = []
            for i in range(n):
                blocks.append(BasicBlock(cin, planes, stride if i == 0 else 1))
                cin = planes
            stages.append(Stage(*blocks))
        super().__init__(ConvBNAct(3, filters[0], 3), stages, cin, num_classes)
        init_weights(self)


_BASE = (16, 16, 32, 64)
_X4 = (32, 64, 128, 256)

for _depth in (8, 14, 20, 32, 44, 56, 110):
    register(f"resnet{_depth}", REFERENCE_KEYS)(partial(CifarResNet, _depth, _BASE))
register("resnet8x4", REFERENCE_KEYS)(partial(CifarResNet, 8, _X4))
register("resnet32x4", REFERENCE_KEYS)(partial(CifarResNet, 32, _X4))
