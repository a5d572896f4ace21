"""Wide ResNet (Zagoruyko & Komodakis, BMVC 2016) in the reference layout: a bare 3x3 ``conv1`` stem,
``block1..3`` each holding a Sequential ``layer`` of pre-activation blocks (``bn1 relu1 conv1 bn2 relu2
conv2``, the stride on ``conv1``; where the width changes the block first replaces its input by
ReLU(BN(x)) and a 1x1 ``convShortcut`` projects that), then ``bn1``/``relu`` and an 8x8 average pool
before the ``fc`` head. The stages are the three group outputs (pre-BN) plus ReLU(BN(group3)), the map
kdlens adds as its last stage."""
from functools import partial

import torch.nn.functional as F
from torch import nn


class Block(nn.Module):
    def __init__(self, cin, cout, stride):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(cin)
        self.relu1 = nn.ReLU()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.relu2 = nn.ReLU()
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.convShortcut = None if cin == cout else nn.Conv2d(cin, cout, 1, stride, 0, bias=False)

    def forward(self, x):
        act = self.relu1(self.bn1(x))
        out = self.conv2(self.relu2(self.bn2(self.conv1(act))))
        return out + (x if self.convShortcut is None else self.convShortcut(act))


class Group(nn.Module):
    def __init__(self, n, cin, cout, stride):
        super().__init__()
        self.layer = nn.Sequential(*[Block(cin if i == 0 else cout, cout, stride if i == 0 else 1) for i in range(n)])

    def forward(self, x):
        return self.layer(x)


class WRN(nn.Module):
    def __init__(self, depth, widen, num_classes):
        super().__init__()
        n = (depth - 4) // 6
        widths = (16, 16 * widen, 32 * widen, 64 * widen)
        self.conv1 = nn.Conv2d(3, widths[0], 3, 1, 1, bias=False)
        self.block1 = Group(n, widths[0], widths[1], 1)
        self.block2 = Group(n, widths[1], widths[2], 2)
        self.block3 = Group(n, widths[2], widths[3], 2)
        self.bn1 = nn.BatchNorm2d(widths[3])
        self.relu = nn.ReLU()
        self.fc = nn.Linear(widths[3], num_classes)

    def forward(self, x):
        stem = self.conv1(x)
        stages, out = [], stem
        for group in (self.block1, self.block2, self.block3):
            out = group(out)
            stages.append(out)
        last = self.relu(self.bn1(out))
        stages.append(last)
        pooled = F.avg_pool2d(last, 8).flatten(1)
        return self.fc(pooled), {"stem": stem, "stages": stages, "pooled": pooled}


ARCHS = {f"wrn_{d}_{k}": partial(WRN, d, k) for d, k in ((16, 1), (16, 2), (40, 1), (40, 2))}
