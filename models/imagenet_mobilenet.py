"""ImageNet MobileNets behind the ``Features`` contract: ``imagenet_mobilenet_v1`` (Howard et al., "MobileNets:
Efficient Convolutional Neural Networks for Mobile Vision Applications", arXiv 2017), the reference ImageNet
student of ResNet50, and torchvision's ``imagenet_mobilenet_v2`` (Sandler et al., "MobileNetV2: Inverted
Residuals and Linear Bottlenecks", CVPR 2018).

Both are one ``nn.Sequential`` of blocks: block 0 is the stem (3x3/2 conv, BN, activation) and the stages
are cut just before each stride change, each ending at a block of ``ends``; so at 224x224 the stages run
at 56, 28, 14 and 7. A stage's last block is split where its final activation is: a block that ends in
one (a Sequential whose last module is a ReLU / ReLU6) gives ``preact`` = its output before that
activation, applied functionally (torchvision's are in place and would overwrite ``preact``); a block
with a linear output (MobileNetV2's inverted residuals) gives ``preact`` = its output. ``bn_before_relu()``
= the last BN of each stage's last block. ``pooled`` = global mean of ``stages[-1]`` (both references pool
with a fixed or adaptive 7x7 average: the same values at 224, and any input size works).

MobileNetV1 (Table 1 of the paper: conv 3x3/2 32, depthwise-separable blocks 64, 128/2, 128, 256/2, 256,
512/2, 5x512, 1024/2, 1024, average pool, fc) is defined here in the layout of mdistiller's ImageNet
MobileNetV1 - ``model.<i>`` the 14 blocks, ``conv_bn`` (conv, BN, ReLU) for i = 0 and ``conv_dw`` (3x3
depthwise conv, BN, ReLU, 1x1 conv, BN, ReLU) after, ``fc`` the head - so a state dict of that network
loads as it is. Its fixed ``AvgPool2d(7)`` (no weights) is the global mean here. Features at 224: ``stem`` (32, 112,
112); ``stages`` (128, 56, 56), (256, 28, 28), (512, 14, 14), (1024, 7, 7), mdistiller's ``feats`` (after
blocks 3, 5, 11 and 13); ``preact`` their pointwise BN outputs. Initialisation: He-normal convs, BN (1, 0),
as the zoo's ``init_weights`` (mdistiller's leaves PyTorch's defaults).

MobileNetV2 is torchvision's network (``torchvision.models.mobilenet_v2(weights=None, num_classes=N)``),
its modules adopted under torchvision's names (``features.<i>``, ``classifier.1``), so a torchvision state
dict loads without renaming. Stages: ``features[1:4]``, ``[4:7]``, ``[7:14]``, ``[14:18]`` (the paper's
bottleneck settings 1-2, 3, 4-5 and 6-7; the same cuts as the CIFAR ``MobileNetV2``), at 224 (24, 56, 56),
(32, 28, 28), (96, 14, 14), (320, 7, 7), plus the final 1x1 conv to 1280, ReLU6 included, (1280, 7, 7),
so that ``stages[-1]`` is the map the head pools. ``stem`` = ``features[0]`` (32, 112, 112). The activations
are ReLU6, so each stage map is ReLU6(``preact``) for the 1280 tap, ``preact`` itself for the linear blocks.
torchvision's head is ``Sequential(Dropout(0.2), Linear)``, saved as ``classifier.1.*``: it is kept whole
under that name, and the contract's ``classifier`` is its Linear, ``classifier[1]``. The head reads
``pooled`` directly, so the Dropout is not applied (logits in eval mode are torchvision's; training runs
without that dropout).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .base import Classifier, Features
from .blocks import init_weights, make_features, torchvision_models
from .registry import register

_FUNCTIONAL = {nn.ReLU: F.relu, nn.ReLU6: F.relu6}  # a block's final activation module -> the same, not in place

# (output channels, stride) of the depthwise-separable blocks, Table 1 of Howard et al.
V1_BLOCKS = ((64, 1), (128, 2), (128, 1), (256, 2), (256, 1), (512, 2), (512, 1), (512, 1), (512, 1), (512, 1),
             (512, 1), (1024, 2), (1024, 1))


def forward_pre(block: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(output, output before the block's final activation; the output itself if it has none)."""
    act = _FUNCTIONAL.get(type(block[-1])) if isinstance(block, nn.Sequential) else None
    if act is None:
        out = block(x)
        return out, out
    pre = x
    for m in list(block)[:-1]:  # not block[:-1]: slicing rebuilds the Sequential's class (torchvision's cannot)
        pre = m(pre)
    return act(pre), pre


class CutSequential(Classifier):
    """A stem and blocks in one Sequential (``body``), cut into stages after the blocks ``ends``."""

    body_name: str  # the Sequential's attribute name, as in the reference's state dict
    ends: tuple[int, ...]

    @property
    def body(self) -> nn.Sequential:
        return getattr(self, self.body_name)

    def extract(self, x: torch.Tensor) -> Features:
        body = self.body
        stem = body[0](x)
        h, start, n = stem, 1, len(self.ends)
        outs, pres = [], []
        for i, end in enumerate(self.ends):
            h = body[start:end](h)
            h, pre = forward_pre(body[end], h)
            h = self.through_slots(i, n, h)
            outs.append(h)
            pres.append(pre)
            start = end + 1
        return make_features(stem, outs, pres)

    def bn_before_relu(self) -> list[nn.Module]:
        return [[m for m in self.body[end].modules() if isinstance(m, nn.BatchNorm2d)][-1] for end in self.ends]

    def stage_prefix(self, index: int) -> str:
        """The stage's last block (the one that computes its output map), e.g. ``model.13.``."""
        return f"{self.body_name}.{self.ends[index % len(self.ends)]}."

    def stem_prefix(self) -> str:
        return f"{self.body_name}.0."


# The ReLUs run in place, as the reference's: each overwrites only a BN output nothing else reads (a
# stage's last activation, whose input is ``preact``, is applied out of place by ``forward_pre``).
def conv_bn(cin: int, cout: int, stride: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


def conv_dw(cin: int, cout: int, stride: int) -> nn.Sequential:
    """Depthwise-separable block: 3x3 depthwise conv, BN, ReLU, then 1x1 pointwise conv, BN, ReLU."""
    return nn.Sequential(nn.Conv2d(cin, cin, 3, stride, 1, groups=cin, bias=False), nn.BatchNorm2d(cin),
                         nn.ReLU(inplace=True), nn.Conv2d(cin, cout, 1, 1, 0, bias=False), nn.BatchNorm2d(cout),
                         nn.ReLU(inplace=True))


class MobileNetV1(CutSequential):
    body_name = "model"
    ends = (3, 5, 11, 13)

    def __init__(self, num_classes: int):
        super().__init__()
        blocks, cin = [conv_bn(3, 32, 2)], 32
        for cout, stride in V1_BLOCKS:
            blocks.append(conv_dw(cin, cout, stride))
            cin = cout
        self.model = nn.Sequential(*blocks)
        self.fc = nn.Linear(cin, num_classes)
        init_weights(self)

    @property
    def classifier(self) -> nn.Linear:
        return self.fc


class TorchvisionMobileNetV2(CutSequential):
    body_name = "features"
    ends = (3, 6, 13, 17, 18)

    def __init__(self, num_classes: int):
        super().__init__()
        net = torchvision_models().mobilenet_v2(weights=None, num_classes=num_classes)
        self.features = net.features
        # Registered under torchvision's name, which the ``classifier`` property below also holds: the
        # assignment goes to the module registry (nn.Module.__setattr__), the property reads its Linear.
        self.classifier = net.classifier

    @property
    def classifier(self) -> nn.Linear:
        return self._modules["classifier"][1]


register("imagenet_mobilenet_v1")(MobileNetV1)
register("imagenet_mobilenet_v2")(TorchvisionMobileNetV2)
