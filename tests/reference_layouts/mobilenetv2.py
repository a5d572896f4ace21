"""MobileNetV2 (Sandler et al., CVPR 2018), ``mobile_half`` (width 0.5, expansion 6), in the reference
layout: ``conv1`` = Sequential(3x3 stride-2 conv, BN, ReLU) to 16 channels; ``blocks.<i>`` one Sequential
per setting (t, c, n, s) of inverted residuals, each a ``conv`` Sequential (0 1x1 expand, 1 BN, 2 ReLU,
3 3x3 depthwise carrying the stride, 4 BN, 5 ReLU, 6 1x1 linear projection, 7 BN; the expansion conv is
kept for t = 1), plus the input when the stride is 1 and the widths agree; ``conv2`` = Sequential(1x1
conv, BN, ReLU) to 1280 channels; a 2x2 average pool; ``classifier`` = Sequential(Linear). Plain ReLU,
not ReLU6. The stages are the outputs after settings 2, 3, 5 and 7 plus the ``conv2`` map."""
from torch import nn

SETTINGS = ((1, 16, 1, 1), (6, 24, 2, 1), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2),
            (6, 320, 1, 1))


class InvertedResidual(nn.Module):
    def __init__(self, cin, cout, stride, t):
        super().__init__()
        mid = cin * t
        self.residual = stride == 1 and cin == cout
        self.conv = nn.Sequential(
            nn.Conv2d(cin, mid, 1, 1, 0, bias=False), nn.BatchNorm2d(mid), nn.ReLU(),
            nn.Conv2d(mid, mid, 3, stride, 1, groups=mid, bias=False), nn.BatchNorm2d(mid), nn.ReLU(),
            nn.Conv2d(mid, cout, 1, 1, 0, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x):
        out = self.conv(x)
        return out + x if self.residual else out


class MobileHalf(nn.Module):
    def __init__(self, num_classes, width=0.5, last=1280):
        super().__init__()
        cin = int(32 * width)
        self.conv1 = nn.Sequential(nn.Conv2d(3, cin, 3, 2, 1, bias=False), nn.BatchNorm2d(cin), nn.ReLU())
        self.blocks = nn.ModuleList()
        for t, c, n, s in SETTINGS:
            cout, units = int(c * width), []
            for i in range(n):
                units.append(InvertedResidual(cin, cout, s if i == 0 else 1, t))
                cin = cout
            self.blocks.append(nn.Sequential(*units))
        self.conv2 = nn.Sequential(nn.Conv2d(cin, last, 1, 1, 0, bias=False), nn.BatchNorm2d(last), nn.ReLU())
        self.avgpool = nn.AvgPool2d(2, ceil_mode=True)
        self.classifier = nn.Sequential(nn.Linear(last, num_classes))

    def forward(self, x):
        stem = out = self.conv1(x)
        stages = []
        for i, setting in enumerate(self.blocks):
            out = setting(out)
            if i in (1, 2, 4, 6):
                stages.append(out)
        out = self.conv2(out)
        stages.append(out)
        pooled = self.avgpool(out).flatten(1)
        return self.classifier(pooled), {"stem": stem, "stages": stages, "pooled": pooled}


ARCHS = {"MobileNetV2": MobileHalf}
