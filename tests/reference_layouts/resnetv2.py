"""ImageNet-style ResNet18/34/50 on CIFAR (He et al., CVPR 2016; RepDistiller's ``resnetv2``) in the
reference layout: ``conv1``/``bn1`` 3x3 stride-1 stem (no max-pool), ``layer1..4`` of ``BasicBlock``
(``conv1 bn1 conv2 bn2``) or ``Bottleneck`` (``conv1 bn1 conv2 bn2 conv3 bn3``, stride on the 3x3) with a
``shortcut`` Sequential(conv1x1, BN) where the shape changes (an empty, parameterless one otherwise),
``linear`` head after a global average pool."""
from functools import partial

import torch.nn.functional as F
from torch import nn

from .common import staged_forward
from .resnet import Block, projection


class Basic(Block):
    shortcut_name = "shortcut"


class Bottle(nn.Module):
    expansion = 4

    def __init__(self, cin, planes, stride):
        super().__init__()
        cout = 4 * planes
        self.conv1 = nn.Conv2d(cin, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, cout, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(cout)
        self.shortcut = projection(cin, cout, stride)

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = F.relu(self.bn2(self.conv2(out)))
        return F.relu(self.bn3(self.conv3(out)) + self.shortcut(x))


class ResNet(nn.Module):
    def __init__(self, block, counts, num_classes):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        cin = 64
        for i, (planes, count, stride) in enumerate(zip((64, 128, 256, 512), counts, (1, 2, 2, 2)), 1):
            blocks = []
            for j in range(count):
                blocks.append(block(cin, planes, stride if j == 0 else 1))
                cin = planes * block.expansion
            setattr(self, f"layer{i}", nn.Sequential(*blocks))
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.linear = nn.Linear(cin, num_classes)

    def forward(self, x):
        return staged_forward(F.relu(self.bn1(self.conv1(x))), (self.layer1, self.layer2, self.layer3, self.layer4),
                              self.avgpool, self.linear)


ARCHS = {"ResNet18": partial(ResNet, Basic, (2, 2, 2, 2)), "ResNet34": partial(ResNet, Basic, (3, 4, 6, 3)),
         "ResNet50": partial(ResNet, Bottle, (3, 4, 6, 3))}
