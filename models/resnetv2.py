"""ImageNet-style ResNets on CIFAR (He et al. 2016; the "resnetv2" module of RepDistiller / mdistiller).

ResNet18 / ResNet34 use ``BasicBlock`` x [2,2,2,2] / [3,4,6,3]; ResNet50 uses ``Bottleneck`` (1x1 -> 3x3 ->
1x1, expansion 4) x [3,4,6,3]. Widths 64, 128, 256, 512 (times the expansion) at strides 1, 2, 2, 2. Unlike
torchvision, the stem is a single 3x3 stride-1 conv + BN + ReLU without max-pooling, so a 32x32 input
ends at 4x4. Depth = 2 * sum(blocks) + 2 (basic) or 3 * sum(blocks) + 2 (bottleneck).

Features: ``stem`` (64, 32, 32); four post-ReLU ``stages``, the last being the CAM map (512 or 2048
channels, 4x4); ``preact`` = the residual sums before each stage's final ReLU. The head pools with a global
mean (the reference uses ``AdaptiveAvgPool2d(1)``, the same thing). Checkpoints of the reference frameworks
(``conv1``/``bn1`` stem, ``layer1..4`` of blocks with a ``shortcut`` (conv, BN) projection, ``linear`` head)
import under ``REFERENCE_KEYS`` (models/imported.py).
"""
from __future__ import annotations

import torch.nn.functional as F
from torch import nn

from .blocks import (BasicBlock, ConvBNAct, PreactBlock, Stage, StagedClassifier, conv1x1, conv3x3,
                     init_weights, projection_shortcut)
from .imported import renamer, shifted
from .registry import register

REFERENCE_KEYS = renamer((r"^conv1\.", "stem.conv."), (r"^bn1\.", "stem.bn."),
                         (r"^layer(\d+)\.", shifted(1, -1, "stages.{}.")), (r"^linear\.", "classifier."))


class Bottleneck(PreactBlock):
    """relu(BN(1x1 up)(relu(BN(3x3, stride)(relu(BN(1x1 down)(x))))) + sc(x)), output 4 * planes."""

    expansion = 4

    def __init__(self, cin: int, planes: int, stride: int = 1):
        super().__init__()
        cout = planes * self.expansion
        self.conv1 = conv1x1(cin, planes)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = conv3x3(planes, planes, stride)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = conv1x1(planes, cout)
        self.bn3 = nn.BatchNorm2d(cout)
        self.shortcut = projection_shortcut(cin, cout, stride)

    def forward_pre(self, x, x_pre=None):
        out = F.relu(self.bn1(self.conv1(x)))
        out = F.relu(self.bn2(self.conv2(out)))
        pre = self.bn3(self.conv3(out)) + self.shortcut(x)
        return F.relu(pre), pre

    @property
    def out_bn(self) -> nn.BatchNorm2d:
        return self.bn3


class ResNetV2(StagedClassifier):
    def __init__(self, block: type[BasicBlock] | type[Bottleneck], counts: tuple[int, int, int, int],
                 num_classes: int):
        stages, cin = [], 64
        for planes, count, stride in zip((64, 128, 256, 512), counts, (1, 2, 2, 2)):
            blocks = []
            for i in range(count):
                blocks.append(block(cin, planes, stride if i == 0 else 1))
                cin = planes * block.expansion
            stages.append(Stage(*blocks))
        super().__init__(ConvBNAct(3, 64, 3), stages, cin, num_classes)
        init_weights(self)


@register("ResNet18", REFERENCE_KEYS)
def resnet18(num_classes: int) -> ResNetV2:
    """ResNet18 (BasicBlock [2,2,2,2]) with a CIFAR stem."""
    return ResNetV2(BasicBlock, (2, 2, 2, 2), num_classes)


@register("ResNet34", REFERENCE_KEYS)
def resnet34(num_classes: int) -> ResNetV2:
    """ResNet34 (BasicBlock [3,4,6,3]) with a CIFAR stem."""
    return ResNetV2(BasicBlock, (3, 4, 6, 3), num_classes)


@register("ResNet50", REFERENCE_KEYS)
def resnet50(num_classes: int) -> ResNetV2:
    """ResNet50 (Bottleneck [3,4,6,3]) with a CIFAR stem."""
    return ResNetV2(Bottleneck, (3, 4, 6, 3), num_classes)
