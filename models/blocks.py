"""Building blocks shared by the CIFAR model zoo (one definition each, used by every family).

Every block that ends a stage follows one small protocol, ``forward_pre(x, x_pre=None) -> (out, pre)``:
``out`` is the block output and ``pre`` the same map before the block's final activation (what OFD,
ReviewKD and AB read). ``x_pre`` is the pre-activation of the block's *input*; only ShuffleNetV2 needs
it (its blocks pass half of their input through untouched). ``out_bn`` names the BatchNorm whose output
is (the learned part of) ``pre``.

``StagedClassifier`` is the common skeleton stem -> stages -> optional 1x1 "tap" conv -> global average
pooling -> ``nn.Linear``. Pooling is always a global mean over H and W, so for a 32x32 input it equals the
reference's fixed ``AvgPool2d(8)`` / ``AvgPool2d(4)`` / ``AvgPool2d(2)`` and for other sizes it still
satisfies the CAM identity ``mean_hw(stages[-1]) @ W.T + b == logits``.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .base import Classifier, Features


def mean_hw(x: torch.Tensor) -> torch.Tensor:
    """Global average pooling: (B, C, H, W) -> (B, C)."""
    return x.mean(dim=(2, 3))


def conv3x3(cin: int, cout: int, stride: int = 1, groups: int = 1, bias: bool = False) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, 3, stride=stride, padding=1, groups=groups, bias=bias)


def conv1x1(cin: int, cout: int, stride: int = 1, groups: int = 1, bias: bool = False) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, 1, stride=stride, padding=0, groups=groups, bias=bias)


def channel_shuffle(x: torch.Tensor, groups: int) -> torch.Tensor:
    """ShuffleNet channel shuffle: view channels as (groups, C/groups), transpose, flatten back."""
    n, c, h, w = x.shape
    return x.view(n, groups, c // groups, h, w).transpose(1, 2).reshape(n, c, h, w)


def projection_shortcut(cin: int, cout: int, stride: int) -> nn.Module:
    """Identity when shapes agree, else a strided 1x1 conv + BN (ResNet "option B")."""
    if stride == 1 and cin == cout:
        return nn.Identity()
    return nn.Sequential(conv1x1(cin, cout, stride), nn.BatchNorm2d(cout))


class PreactBlock(nn.Module):
    """Base of blocks that can report their pre-activation output; ``forward`` returns ``out`` only."""

    def forward_pre(self, x: torch.Tensor, x_pre: torch.Tensor | None = None):  # pragma: no cover
        raise NotImplementedError

    @property
    def out_bn(self) -> nn.BatchNorm2d:  # pragma: no cover
        raise NotImplementedError

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_pre(x)[0]


class ConvBNAct(PreactBlock):
    """conv -> BN -> (ReLU). ``pre`` is the BN output. Conv bias is off unless asked (VGG keeps it)."""

    def __init__(self, cin: int, cout: int, kernel: int = 3, stride: int = 1, groups: int = 1,
                 bias: bool = False, act: bool = True):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, kernel, stride=stride, padding=kernel // 2, groups=groups, bias=bias)
        self.bn = nn.BatchNorm2d(cout)
        self.act = act
        self.out_channels = cout

    def forward_pre(self, x, x_pre=None):
        pre = self.bn(self.conv(x))
        return (F.relu(pre) if self.act else pre), pre

    @property
    def out_bn(self) -> nn.BatchNorm2d:
        return self.bn


class BasicBlock(PreactBlock):
    """Post-activation residual block (He et al. 2016): relu(BN(conv3x3(relu(BN(conv3x3(x))))) + sc(x)).

    Used unchanged by the CIFAR ResNets (``resnet.py``) and the ImageNet-style ResNet18/34
    (``resnetv2.py``). The stride sits on the first conv; the shortcut projects when shapes change.
    ``pre`` is the residual sum before the final ReLU; ``out_bn`` is ``bn2`` (the sum also contains the
    shortcut, exactly as in the reference's OFD wiring).
    """

    expansion = 1

    def __init__(self, cin: int, planes: int, stride: int = 1):
        super().__init__()
        self.conv1 = conv3x3(cin, planes, stride)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = conv3x3(planes, planes)
        self.bn2 = nn.BatchNorm2d(planes)
        self.shortcut = projection_shortcut(cin, planes, stride)

    def forward_pre(self, x, x_pre=None):
        out = F.relu(self.bn1(self.conv1(x)))
        pre = self.bn2(self.conv2(out)) + self.shortcut(x)
        return F.relu(pre), pre

    @property
    def out_bn(self) -> nn.BatchNorm2d:
        return self.bn2


class Stage(nn.Sequential):
    """A sequence of ``PreactBlock``s (plain modules such as pooling may be interleaved).

    ``forward_pre`` threads the pre-activation through the blocks and returns the last block's.
    """

    def forward_pre(self, x: torch.Tensor, x_pre: torch.Tensor | None = None):
        pre = x_pre
        for m in self:
            if isinstance(m, PreactBlock):
                x, pre = m.forward_pre(x, pre)
            else:
                x, pre = m(x), None
        if pre is None:
            raise RuntimeError("a Stage must end with a PreactBlock")
        return x, pre

    @property
    def out_bn(self) -> nn.Module:
        return self[-1].out_bn


def make_features(stem: torch.Tensor, stages: list[torch.Tensor], preact: list[torch.Tensor]) -> Features:
    return Features(stem=stem, stages=stages, preact=preact, pooled=mean_hw(stages[-1]))


class StagedClassifier(Classifier):
    """stem -> stages -> optional tap (a ``ConvBNAct``) -> GAP -> Linear.

    ``stages`` of the Features are the outputs of every stage followed by the tap's output if there is
    one, so ``stages[-1]`` is always the map the head pools. ``preact`` runs in parallel.
    """

    def __init__(self, stem: nn.Module, stages: list[Stage], width: int, num_classes: int,
                 tap: ConvBNAct | None = None):
        super().__init__()
        self.stem = stem
        self.stages = nn.ModuleList(stages)
        self.tap = tap
        self.classifier = nn.Linear(tap.out_channels if tap is not None else width, num_classes)

    def extract(self, x: torch.Tensor) -> Features:
        stem = self.stem(x)
        h, pre = stem, None
        outs, pres = [], []
        n = len(self.stages) + (self.tap is not None)
        for i, stage in enumerate(self.stages):
            h = self.stage_input(i, h, x)
            h, pre = stage.forward_pre(h, pre)
            h = self.through_slots(i, n, h)
            outs.append(h)
            pres.append(pre)
        if self.tap is not None:
            h, pre = self.tap.forward_pre(h)
            h = self.through_slots(n - 1, n, h)
            outs.append(h)
            pres.append(pre)
        return make_features(stem, outs, pres)

    def stage_input(self, i: int, h: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """Hook: the map fed to stage ``i`` given the network input ``x`` (identity; VGG overrides it)."""
        return h

    def bn_before_relu(self) -> list[nn.Module]:
        bns = [stage.out_bn for stage in self.stages]
        if self.tap is not None:
            bns.append(self.tap.out_bn)
        return bns


def init_weights(model: nn.Module, linear: str = "default") -> nn.Module:
    """The reference zoo's initialisation: He-normal (fan_out) convs with zero bias, BN = (1, 0).

    ``linear``: ``"default"`` keeps PyTorch's Linear init, ``"zero_bias"`` zeroes the bias only (WRN),
    ``"normal"`` draws N(0, 0.01) weights with zero bias (VGG, MobileNetV2).
    """
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Linear):
            if linear == "normal":
                nn.init.normal_(m.weight, 0.0, 0.01)
                nn.init.zeros_(m.bias)
            elif linear == "zero_bias":
                nn.init.zeros_(m.bias)
            elif linear != "default":
                raise ValueError(f"unknown linear init {linear!r}")
    return model


def torchvision_models():
    """torchvision.models, imported when an ImageNet model is built: importing torchvision (which loads
    torch._dynamo) adds ~2 s to the start of every stage process, and only these families need it."""
    import torchvision.models

    return torchvision.models
