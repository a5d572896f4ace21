"""CIFAR ResNet (He et al., CVPR 2016, Sec. 4.2) in the reference layout: ``conv1``/``bn1`` stem,
``layer1..3`` of ``BasicBlock`` (``conv1 bn1 conv2 bn2`` and a ``downsample`` Sequential(conv1x1, BN)
where the shape changes), ``fc`` head after an 8x8 average pool."""
from functools import partial

import torch.nn.functional as F
from torch import nn

from .common import staged_forward


def projection(cin, cout, stride):
    """Sequential(conv1x1, BN) where the shape changes; an empty Sequential (the identity, no keys) elsewhere."""
    if stride == 1 and cin == cout:
        return nn.Sequential()
    return nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))


class Block(nn.Module):
    expansion = 1
    shortcut_name = "downsample"  # resnetv2's BasicBlock is the same block with "shortcut"

    def __init__(self, cin, planes, stride):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        setattr(self, self.shortcut_name, projection(cin, planes, stride))

    def forward(self, x):
        out = self.bn2(self.conv2(F.relu(self.bn1(self.conv1(x)))))
        return F.relu(out + getattr(self, self.shortcut_name)(x))


class ResNet(nn.Module):
    def __init__(self, depth, filters, num_classes):
        super().__init__()
        n = (depth - 2) // 6
        self.conv1 = nn.Conv2d(3, filters[0], 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(filters[0])
        cin = filters[0]
        for i, (planes, stride) in enumerate(zip(filters[1:], (1, 2, 2)), 1):
            blocks = []
            for j in range(n):
                blocks.append(Block(cin, planes, stride if j == 0 else 1))
                cin = planes
            setattr(self, f"layer{i}", nn.Sequential(*blocks))
        self.avgpool = nn.AvgPool2d(8)
        self.fc = nn.Linear(cin, num_classes)

    def forward(self, x):
        return staged_forward(F.relu(self.bn1(self.conv1(x))), (self.layer1, self.layer2, self.layer3),
                              self.avgpool, self.fc)


_BASE, _X4 = (16, 16, 32, 64), (32, 64, 128, 256)
ARCHS = {**{f"resnet{d}": partial(ResNet, d, _BASE) for d in (8, 14, 20, 32, 44, 56, 110)},
         "resnet8x4": partial(ResNet, 8, _X4), "resnet32x4": partial(ResNet, 32, _X4)}
