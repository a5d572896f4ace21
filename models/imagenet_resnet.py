"""torchvision's ImageNet ResNets (He et al., "Deep Residual Learning for Image Recognition", CVPR 2016,
Table 1) behind the ``Features`` contract: ``imagenet_resnet18``, ``imagenet_resnet34`` (BasicBlock
[2,2,2,2] / [3,4,6,3]), ``imagenet_resnet50``, ``imagenet_resnet101`` (Bottleneck [3,4,6,3] / [3,4,23,3]).

The network is torchvision's own (``torchvision.models.resnet18(weights=None, num_classes=N)``, ...): its
modules are adopted as they are, under torchvision's names (``conv1``, ``bn1``, ``layer1`` .. ``layer4``,
``fc``), so a torchvision state dict - the ImageNet teachers the reference distillers use - is this
model's state dict and loads without any renaming (``teacher.checkpoint: resnet34-b627a593.pth``). Only the
parameter-free ``relu`` and ``avgpool`` are not adopted (functional ReLU, global mean). ``classifier`` is
``fc`` itself, not a second copy of it, so its weights are saved once, as ``fc.*``.

Features at 224x224 (the 7x7/2 stem conv and the 3x3/2 max-pool make the four stages 56, 28, 14, 7):

* ``stem``   = ReLU(BN(conv1)), **before** the max-pool: (64, 112, 112), as mdistiller's ImageNet ResNet
  taps it (its ``feats[0]``).
* ``stages`` = the outputs of ``layer1`` .. ``layer4`` (post-ReLU): (64|256, 56, 56), (128|512, 28, 28),
  (256|1024, 14, 14), (512|2048, 7, 7) for BasicBlock|Bottleneck; the last is the CAM map.
* ``preact`` = the same maps before the last block's final ReLU: that block is computed from its own
  modules (conv/BN/``downsample``), so the residual sum is seen before torchvision's in-place ReLU.
* ``pooled`` = global mean of ``stages[-1]`` (torchvision's ``AdaptiveAvgPool2d(1)``, the same values).

``bn_before_relu()`` = ``bn2`` (BasicBlock) or ``bn3`` (Bottleneck) of each stage's last block, whose output
plus the shortcut is ``preact`` (OFD's margins, as in mdistiller's ``get_bn_before_relu``).
"""
from __future__ import annotations

from functools import partial

import torch
import torch.nn.functional as F
from torch import nn

from .base import Classifier, Features
from .blocks import make_features, torchvision_models
from .registry import register

STAGES = ("layer1", "layer2", "layer3", "layer4")


def is_bottleneck(block: nn.Module) -> bool:
    """torchvision's Bottleneck (conv1-3, bn1-3) rather than its BasicBlock (conv1-2, bn1-2)."""
    return hasattr(block, "bn3")


def out_bn(block: nn.Module) -> nn.BatchNorm2d:
    """The BN whose output, plus the shortcut, is the block's pre-activation sum."""
    return block.bn3 if is_bottleneck(block) else block.bn2


def forward_pre(block: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(output, residual sum before the final ReLU) of a torchvision block, from the block's own modules
    (the same operations as its ``forward``, which applies the ReLU in place and keeps no sum)."""
    identity = x if block.downsample is None else block.downsample(x)
    out = F.relu(block.bn1(block.conv1(x)))
    if is_bottleneck(block):
        out = F.relu(block.bn2(block.conv2(out)))
        pre = block.bn3(block.conv3(out)) + identity
    else:
        pre = block.bn2(block.conv2(out)) + identity
    return F.relu(pre), pre


class ImageNetResNet(Classifier):
    def __init__(self, depth: int, num_classes: int):
        super().__init__()
        net = getattr(torchvision_models(), f"resnet{depth}")(weights=None, num_classes=num_classes)
        self.conv1, self.bn1, self.maxpool = net.conv1, net.bn1, net.maxpool
        for name in STAGES:
            self.add_module(name, getattr(net, name))
        self.fc = net.fc

    @property
    def classifier(self) -> nn.Linear:
        return self.fc

    def layers(self) -> list[nn.Sequential]:
        return [getattr(self, name) for name in STAGES]

    def extract(self, x: torch.Tensor) -> Features:
        stem = F.relu(self.bn1(self.conv1(x)))
        h = self.maxpool(stem)
        outs, pres = [], []
        for i, layer in enumerate(self.layers()):
            h = layer[:-1](h)
            h, pre = forward_pre(layer[-1], h)
            h = self.through_slots(i, len(STAGES), h)
            outs.append(h)
            pres.append(pre)
        return make_features(stem, outs, pres)

    def bn_before_relu(self) -> list[nn.Module]:
        return [out_bn(layer[-1]) for layer in self.layers()]

    def stage_prefix(self, index: int) -> str:
        return f"{STAGES[index % len(STAGES)]}."

    def stem_prefix(self) -> str:
        return "conv1."


for _depth in (18, 34, 50, 101):
    register(f"imagenet_resnet{_depth}")(partial(ImageNetResNet, _depth))
