"""CIFAR ShuffleNet v1 (Zhang et al., CVPR 2018) in the reference layout: ``conv1``/``bn1`` 1x1 stem to 24
channels, ``layer1..3`` of ``Bottleneck`` units (``conv1 bn1`` grouped 1x1 -> channel shuffle -> ``conv2 bn2``
3x3 depthwise, ReLU'd -> ``conv3 bn3`` grouped 1x1, and a parameter-free ``shortcut``: empty, or a 3x3
stride-2 average pool whose output is concatenated after the branch), ``linear`` head after a 4x4 average
pool. The first unit after the stem keeps its first 1x1 ungrouped (24 channels), so its shuffle is a no-op."""
from functools import partial

import torch
import torch.nn.functional as F
from torch import nn

from .common import staged_forward


def shuffle(x, groups):
    n, c, h, w = x.shape
    return x.view(n, groups, c // groups, h, w).permute(0, 2, 1, 3, 4).reshape(n, c, h, w)


class Bottleneck(nn.Module):
    def __init__(self, cin, branch_out, stride, groups):
        super().__init__()
        mid = branch_out // 4
        self.g = 1 if cin == 24 else groups
        self.stride = stride
        self.conv1 = nn.Conv2d(cin, mid, 1, groups=self.g, bias=False)
        self.bn1 = nn.BatchNorm2d(mid)
        self.conv2 = nn.Conv2d(mid, mid, 3, stride, 1, groups=mid, bias=False)
        self.bn2 = nn.BatchNorm2d(mid)
        self.conv3 = nn.Conv2d(mid, branch_out, 1, groups=groups, bias=False)
        self.bn3 = nn.BatchNorm2d(branch_out)
        self.shortcut = nn.Sequential(nn.AvgPool2d(3, 2, 1)) if stride == 2 else nn.Sequential()

    def forward(self, x):
        out = shuffle(F.relu(self.bn1(self.conv1(x))), self.g)
        out = self.bn3(self.conv3(F.relu(self.bn2(self.conv2(out)))))
        res = self.shortcut(x)
        return F.relu(torch.cat([out, res], 1) if self.stride == 2 else out + res)


class ShuffleNet(nn.Module):
    def __init__(self, widths, units, groups, num_classes):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 24, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(24)
        cin = 24
        for i, (width, n) in enumerate(zip(widths, units), 1):
            blocks = []
            for j in range(n):
                # the stride-2 unit's branch makes only the channels the pooled input does not bring
                blocks.append(Bottleneck(cin, width - cin if j == 0 else width, 2 if j == 0 else 1, groups))
                cin = width
            setattr(self, f"layer{i}", nn.Sequential(*blocks))
        self.linear = nn.Linear(cin, num_classes)

    def forward(self, x):
        return staged_forward(F.relu(self.bn1(self.conv1(x))), (self.layer1, self.layer2, self.layer3),
                              lambda out: F.avg_pool2d(out, 4), self.linear)


ARCHS = {"ShuffleV1": partial(ShuffleNet, (240, 480, 960), (4, 8, 4), 3)}
