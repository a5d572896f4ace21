"""ShuffleNet V2 (Ma et al., "ShuffleNet V2", ECCV 2018), CIFAR variant ``ShuffleV2`` of RepDistiller.

Basic unit: split the channels in half; one half passes through, the other goes 1x1 conv-BN-ReLU ->
3x3 depthwise conv-BN -> 1x1 conv-BN-ReLU; concatenate and channel-shuffle (2 groups). Down-sampling unit:
both branches see the whole input (left: 3x3 depthwise stride 2-BN -> 1x1-BN-ReLU; right: 1x1-BN-ReLU ->
3x3 depthwise stride 2-BN -> 1x1-BN-ReLU), each producing half the output; concatenate and shuffle.
net_size 1 (kept at 1, unlike Exp-KD's 1.5): stem 1x1 conv to 24 channels + BN + ReLU (as the reference,
whose 3x3 stem is commented out), stages of widths (116, 232, 464) made of one down-sampling unit plus
(3, 7, 3) basic units, a 1x1 conv-BN-ReLU ("conv2") to 1024 channels, global average pooling and
``Linear(1024, N)``.
Initialisation is PyTorch's default, as in the reference. Checkpoints of the reference frameworks
(``conv1``/``bn1`` stem, ``layer1..3`` of a ``DownBlock`` ``conv1..5``/``bn1..5`` then ``BasicBlock``s
``conv1..3``/``bn1..3``, ``conv2``/``bn2`` to 1024, ``linear`` head) import under ``REFERENCE_KEYS``
(models/imported.py).

Features and deliberate deviations from the reference:

* ``stages`` = the three stage outputs ((116,16,16), (232,8,8), (464,4,4)) **plus the conv2 output
  ReLU(BN(conv2)) (1024, 4, 4)**, the Exp-KD tap, so ``stages[-1]`` is the map the head pools.
* ``preact`` is the exact pre-ReLU map of every channel: the pass-through half carries the pre-activation
  it had when it was produced (threaded from unit to unit) and the same channel shuffle is applied, so
  ``relu(preact[i]) == stages[i]``. The reference instead concatenates the *post*-ReLU pass-through half
  with the branch's BN output and does not shuffle it.
* ``bn_before_relu()`` exists (the reference raises NotImplementedError for ShuffleNets): every channel of
  a stage output is ReLU(BN(...)) of exactly one BatchNorm somewhere in the stage, so each stage entry is a
  ``RoutedBatchNorm`` view exposing, per output channel, that BN's ``weight``/``bias``/``running_mean``/
  ``running_var`` (gathered live through the same split/concat/shuffle wiring). The tap's entry is its BN.
"""
from __future__ import annotations

import torch
from torch import nn

from .blocks import ConvBNAct, PreactBlock, Stage, StagedClassifier, channel_shuffle
from .imported import renamer, shifted
from .registry import register

_DOWN = ("left_dw", "left_pw", "right_pw1", "right_dw", "right_pw2")  # the reference's conv1..5 / bn1..5
_BASIC = ("pw1", "dw", "pw2")  # conv1..3 / bn1..3
REFERENCE_KEYS = renamer((r"^conv1\.", "stem.conv."), (r"^bn1\.", "stem.bn."),
                         (r"^conv2\.", "tap.conv."), (r"^bn2\.", "tap.bn."),
                         (r"^layer(\d+)\.", shifted(1, -1, "stages.{}.")),
                         (r"^(stages\.\d+\.0\.)(conv|bn)([1-5])\.",
                          lambda m: f"{m[1]}{_DOWN[int(m[3]) - 1]}.{m[2]}."),
                         (r"^(stages\.\d+\.[1-9]\d*\.)(conv|bn)([1-3])\.",
                          lambda m: f"{m[1]}{_BASIC[int(m[3]) - 1]}.{m[2]}."),
                         (r"^linear\.", "classifier."))


def _merge(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Concatenate two (B, C, H, W) halves along channels and interleave them (shuffle, 2 groups)."""
    return channel_shuffle(torch.cat([a, b], 1), 2)


def _merge_vec(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``_merge`` for per-channel vectors, so parameter routing follows the exact same wiring."""
    return _merge(a.reshape(1, -1, 1, 1), b.reshape(1, -1, 1, 1)).flatten()


class DownUnit(PreactBlock):
    def __init__(self, cin: int, cout: int):
        super().__init__()
        mid = cout // 2
        self.left_dw = ConvBNAct(cin, cin, 3, stride=2, groups=cin, act=False)
        self.left_pw = ConvBNAct(cin, mid, 1)
        self.right_pw1 = ConvBNAct(cin, mid, 1)
        self.right_dw = ConvBNAct(mid, mid, 3, stride=2, groups=mid, act=False)
        self.right_pw2 = ConvBNAct(mid, mid, 1)

    def forward_pre(self, x, x_pre=None):
        left, left_pre = self.left_pw.forward_pre(self.left_dw(x))
        right, right_pre = self.right_pw2.forward_pre(self.right_dw(self.right_pw1(x)))
        return _merge(left, right), _merge(left_pre, right_pre)

    def route(self, v_in: torch.Tensor | None, get) -> torch.Tensor:
        return _merge_vec(get(self.left_pw.bn), get(self.right_pw2.bn))


class BasicUnit(PreactBlock):
    def __init__(self, channels: int):
        super().__init__()
        half = channels // 2
        self.pw1 = ConvBNAct(half, half, 1)
        self.dw = ConvBNAct(half, half, 3, groups=half, act=False)
        self.pw2 = ConvBNAct(half, half, 1)

    def forward_pre(self, x, x_pre=None):
        half = x.shape[1] // 2
        keep, keep_pre = x[:, :half], (x if x_pre is None else x_pre)[:, :half]
        out, pre = self.pw2.forward_pre(self.dw(self.pw1(x[:, half:])))
        return _merge(keep, out), _merge(keep_pre, pre)

    def route(self, v_in: torch.Tensor | None, get) -> torch.Tensor:
        if v_in is None:
            raise ValueError("a ShuffleNetV2 stage must start with a DownUnit")
        return _merge_vec(v_in[: v_in.numel() // 2], get(self.pw2.bn))


class RoutedBatchNorm(nn.Module):
    """Read-only per-channel view of the BatchNorms that produce a ShuffleNetV2 stage's pre-activation.

    It holds no parameters of its own (the stage is referenced, not registered) and is recomputed on
    every attribute access, so it always reflects the current weights and running statistics. It has no
    ``forward``: the channels come from different convolutions, so there is no single input to normalise.
    """

    def __init__(self, stage: Stage):
        super().__init__()
        self._stage = (stage,)  # a tuple, so the stage is not registered as a submodule
        self.num_features = int(self.weight.numel())
        self.eps = stage[-1].pw2.bn.eps

    def _route(self, name: str) -> torch.Tensor:
        v = None
        for unit in self._stage[0]:
            v = unit.route(v, lambda bn: getattr(bn, name))
        return v

    weight = property(lambda self: self._route("weight"))
    bias = property(lambda self: self._route("bias"))
    running_mean = property(lambda self: self._route("running_mean"))
    running_var = property(lambda self: self._route("running_var"))

    def forward(self, x):  # pragma: no cover - documented as unsupported
        raise TypeError("RoutedBatchNorm is a parameter view; it cannot be applied to a tensor")


class ShuffleNetV2(StagedClassifier):
    def __init__(self, num_classes: int, widths=(116, 232, 464), units=(3, 7, 3), last_channel: int = 1024):
        cin, stages = 24, []
        for cout, n in zip(widths, units):
            stages.append(Stage(DownUnit(cin, cout), *(BasicUnit(cout) for _ in range(n))))
            cin = cout
        super().__init__(ConvBNAct(3, 24, 1), stages, cin, num_classes, tap=ConvBNAct(cin, last_channel, 1))

    def bn_before_relu(self) -> list[nn.Module]:
        return [RoutedBatchNorm(stage) for stage in self.stages] + [self.tap.out_bn]


@register("ShuffleV2", REFERENCE_KEYS)
def shufflev2(num_classes: int) -> ShuffleNetV2:
    """ShuffleNet V2 at net_size 1: widths (116, 232, 464), units (3, 7, 3), conv2 to 1024."""
    return ShuffleNetV2(num_classes)
