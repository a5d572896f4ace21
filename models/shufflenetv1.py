"""ShuffleNet (v1) (Zhang et al., "ShuffleNet", CVPR 2018), CIFAR variant ``ShuffleV1`` of RepDistiller.

Units: grouped 1x1 conv to out/4 channels + BN + ReLU -> channel shuffle -> 3x3 depthwise conv (stride)
+ BN + ReLU -> grouped 1x1 conv + BN; stride-1 units add the input, stride-2 units concatenate a 3x3
stride-2 average-pooled input (so the conv branch produces out - in channels); ReLU at the end. The first
unit after the 24-channel stem uses ungrouped first conv (and hence no shuffle). Configuration: groups 3,
stage widths [240, 480, 960], units [4, 8, 4] (the first of each stride 2); stem = 1x1 conv to 24
channels + BN + ReLU at full resolution; global average pooling; ``Linear(960, N)``.
Depth: 3 convs per unit x 16 units + stem + head = 50 layers.

Features: ``stem`` (24, 32, 32); ``stages`` = the three stage outputs after their final ReLU
((240,16,16), (480,8,8), (960,4,4)); ``preact`` = the sums before that ReLU; ``bn_before_relu()`` = the
last unit's final BN of each stage (the sum also contains the identity, as in ResNets). Initialisation is
PyTorch's default, as in the reference. No extra tap is needed: the last stage already feeds the head.
Checkpoints of the reference frameworks (``conv1``/``bn1`` stem, ``layer1..3`` of ``Bottleneck`` units with
``conv1 bn1 conv2 bn2 conv3 bn3`` and a parameter-free ``shortcut``, ``linear`` head) import under
``REFERENCE_KEYS`` (models/imported.py).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .blocks import ConvBNAct, PreactBlock, Stage, StagedClassifier, channel_shuffle
from .imported import renamer, shifted
from .registry import register

REFERENCE_KEYS = renamer((r"^conv1\.", "stem.conv."), (r"^bn1\.", "stem.bn."),
                         (r"^layer(\d+)\.", shifted(1, -1, "stages.{}.")),
                         (r"^(stages\.\d+\.\d+\.)(conv|bn)1\.", r"\1reduce.\2."),
                         (r"^(stages\.\d+\.\d+\.)(conv|bn)2\.", r"\1depthwise.\2."),
                         (r"^(stages\.\d+\.\d+\.)(conv|bn)3\.", r"\1expand.\2."),
                         (r"^linear\.", "classifier."))


class ShuffleUnit(PreactBlock):
    def __init__(self, cin: int, cout: int, stride: int, groups: int):
        super().__init__()
        self.stride = stride
        branch_out = cout - cin if stride == 2 else cout
        mid = branch_out // 4
        self.first_groups = 1 if cin == 24 else groups  # the stem's 24 channels are not split into groups
        self.reduce = ConvBNAct(cin, mid, 1, groups=self.first_groups)
        self.depthwise = ConvBNAct(mid, mid, 3, stride=stride, groups=mid)
        self.expand = ConvBNAct(mid, branch_out, 1, groups=groups, act=False)
        self.pool = nn.AvgPool2d(3, stride=2, padding=1) if stride == 2 else None

    def forward_pre(self, x, x_pre=None):
        out = channel_shuffle(self.reduce(x), self.first_groups)
        out = self.expand(self.depthwise(out))
        pre = torch.cat([out, self.pool(x)], 1) if self.pool is not None else out + x
        return F.relu(pre), pre

    @property
    def out_bn(self) -> nn.BatchNorm2d:
        return self.expand.bn


class ShuffleNetV1(StagedClassifier):
    def __init__(self, num_classes: int, widths=(240, 480, 960), units=(4, 8, 4), groups: int = 3):
        cin, stages = 24, []
        for cout, n in zip(widths, units):
            blocks = []
            for i in range(n):
                blocks.append(ShuffleUnit(cin, cout, 2 if i == 0 else 1, groups))
                cin = cout
            stages.append(Stage(*blocks))
        super().__init__(ConvBNAct(3, 24, 1), stages, cin, num_classes)


@register("ShuffleV1", REFERENCE_KEYS)
def shufflev1(num_classes: int) -> ShuffleNetV1:
    """ShuffleNet v1, groups 3, widths [240, 480, 960], units [4, 8, 4]."""
    return ShuffleNetV1(num_classes)
