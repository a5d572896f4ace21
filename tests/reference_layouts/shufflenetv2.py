"""CIFAR ShuffleNet V2 (Ma et al., ECCV 2018), net_size 1, in the reference layout: ``conv1``/``bn1`` 1x1
stem to 24 channels; ``layer1..3`` each a ``DownBlock`` (left ``conv1 bn1`` 3x3 depthwise stride 2 ->
``conv2 bn2`` 1x1 + ReLU; right ``conv3 bn3`` 1x1 + ReLU -> ``conv4 bn4`` 3x3 depthwise stride 2 -> ``conv5
bn5`` 1x1 + ReLU; concatenate left, right; shuffle in 2 groups) and then ``BasicBlock``s (split the channels
in halves, the second goes ``conv1 bn1`` 1x1 + ReLU -> ``conv2 bn2`` 3x3 depthwise -> ``conv3 bn3`` 1x1 +
ReLU; concatenate kept half, branch; shuffle in 2 groups); ``conv2``/``bn2`` 1x1 to 1024 + ReLU; 4x4
average pool; ``linear``. kdlens's last stage is the ReLU(BN(conv2)) map the head pools."""
from functools import partial

import torch
import torch.nn.functional as F
from torch import nn

from .common import staged_forward


def shuffle(x, groups=2):
    n, c, h, w = x.shape
    return x.view(n, groups, c // groups, h, w).permute(0, 2, 1, 3, 4).reshape(n, c, h, w)


def dw(c, stride):
    return nn.Conv2d(c, c, 3, stride, 1, groups=c, bias=False)


def pw(cin, cout):
    return nn.Conv2d(cin, cout, 1, bias=False)


class DownBlock(nn.Module):
    def __init__(self, cin, cout):
        super().__init__()
        mid = cout // 2
        self.conv1, self.bn1 = dw(cin, 2), nn.BatchNorm2d(cin)
        self.conv2, self.bn2 = pw(cin, mid), nn.BatchNorm2d(mid)
        self.conv3, self.bn3 = pw(cin, mid), nn.BatchNorm2d(mid)
        self.conv4, self.bn4 = dw(mid, 2), nn.BatchNorm2d(mid)
        self.conv5, self.bn5 = pw(mid, mid), nn.BatchNorm2d(mid)

    def forward(self, x):
        left = F.relu(self.bn2(self.conv2(self.bn1(self.conv1(x)))))
        right = self.bn4(self.conv4(F.relu(self.bn3(self.conv3(x)))))
        right = F.relu(self.bn5(self.conv5(right)))
        return shuffle(torch.cat([left, right], 1))


class BasicBlock(nn.Module):
    def __init__(self, channels):
        super().__init__()
        half = channels // 2
        self.conv1, self.bn1 = pw(half, half), nn.BatchNorm2d(half)
        self.conv2, self.bn2 = dw(half, 1), nn.BatchNorm2d(half)
        self.conv3, self.bn3 = pw(half, half), nn.BatchNorm2d(half)

    def forward(self, x):
        half = x.shape[1] // 2
        kept, branch = x[:, :half], x[:, half:]
        out = self.bn2(self.conv2(F.relu(self.bn1(self.conv1(branch)))))
        out = F.relu(self.bn3(self.conv3(out)))
        return shuffle(torch.cat([kept, out], 1))


class ShuffleNetV2(nn.Module):
    def __init__(self, widths, units, last, num_classes):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 24, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(24)
        cin = 24
        for i, (width, n) in enumerate(zip(widths, units), 1):
            setattr(self, f"layer{i}", nn.Sequential(DownBlock(cin, width), *(BasicBlock(width) for _ in range(n))))
            cin = width
        self.conv2 = pw(cin, last)
        self.bn2 = nn.BatchNorm2d(last)
        self.linear = nn.Linear(last, num_classes)

    def forward(self, x):
        # kdlens's last stage is the 1024-channel ReLU(BN(conv2)) map the head pools
        tap = lambda out: F.relu(self.bn2(self.conv2(out)))  # noqa: E731
        return staged_forward(F.relu(self.bn1(self.conv1(x))), (self.layer1, self.layer2, self.layer3, tap),
                              lambda out: F.avg_pool2d(out, 4), self.linear)


ARCHS = {"ShuffleV2": partial(ShuffleNetV2, (116, 232, 464), (3, 7, 3), 1024)}
