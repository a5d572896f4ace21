"""VGG-BN for CIFAR (Simonyan & Zisserman, ICLR 2015; RepDistiller's ``vgg*_bn``) in the reference layout:
``block0..block4``, each a Sequential of [conv3x3 (with bias), BN, ReLU] per width with the block's last
ReLU left out (so its convs sit at indices 0, 3, 6, ... and BNs at 1, 4, 7, ...); the block's final ReLU is
applied in ``forward``. 2x2 max-pools ``pool0..pool2`` follow blocks 0-2; ``pool3`` (after block 3) only
when the input is 64 pixels high, so not at 32x32. Then a global average pool and the ``classifier``
Linear(512, N)."""
from functools import partial

import torch.nn.functional as F
from torch import nn

CFGS = {
    "S": [[64], [128], [256], [512], [512]],
    "A": [[64], [128], [256, 256], [512, 512], [512, 512]],
    "B": [[64, 64], [128, 128], [256, 256], [512, 512], [512, 512]],
    "D": [[64, 64], [128, 128], [256, 256, 256], [512, 512, 512], [512, 512, 512]],
    "E": [[64, 64], [128, 128], [256, 256, 256, 256], [512, 512, 512, 512], [512, 512, 512, 512]],
}


def _block(cin, widths):
    layers = []
    for w in widths:
        layers += [nn.Conv2d(cin, w, 3, padding=1), nn.BatchNorm2d(w), nn.ReLU()]
        cin = w
    return nn.Sequential(*layers[:-1])  # the last ReLU is the forward's, after the pre-activation tap


class VGG(nn.Module):
    def __init__(self, cfg, num_classes):
        super().__init__()
        widths, cin = CFGS[cfg], 3
        for i, w in enumerate(widths):
            setattr(self, f"block{i}", _block(cin, w))
            cin = w[-1]
        for i in range(4):
            setattr(self, f"pool{i}", nn.MaxPool2d(2, 2))
        self.pool4 = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(512, num_classes)

    def forward(self, x):
        h = x.shape[2]
        stem = F.relu(self.block0(x))
        out, stages = stem, []
        for i, block in enumerate((self.block1, self.block2, self.block3, self.block4)):
            pool = (self.pool0, self.pool1, self.pool2, self.pool3)[i]
            if i < 3 or h == 64:
                out = pool(out)
            out = F.relu(block(out))
            stages.append(out)
        pooled = self.pool4(out).flatten(1)
        return self.classifier(pooled), {"stem": stem, "stages": stages, "pooled": pooled}


ARCHS = {name: partial(VGG, cfg) for name, cfg in
         (("vgg8", "S"), ("vgg11", "A"), ("vgg13", "B"), ("vgg16", "D"), ("vgg19", "E"))}
