"""VGG with batch normalisation (Simonyan & Zisserman, ICLR 2015), CIFAR variant of RepDistiller.

Five conv blocks of 3x3 conv (with bias) + BN + ReLU; per-block widths for the configurations
S (vgg8), A (vgg11), B (vgg13), D (vgg16), E (vgg19) below, i.e. depth = number of convs + 3 for the
original three FC layers, of which this variant keeps a single ``Linear(512, N)``. 2x2 max-pooling follows
blocks 0, 1, 2 (and block 3 only when built for 64x64 inputs), then global average pooling.

Features: ``stem`` = block 0 output (64, 32, 32); ``stages`` = blocks 1-4 after their ReLU
((128,16,16), (256,8,8), (512,4,4), (512,4,4) for 32x32), each stage being [max-pool, convs]; ``preact``
= the last BN output of each block. As in the reference, the fourth max-pool is applied per forward
call only when the input is 64 pixels high (so 32x32 and 64x64 inputs both end at 4x4). Checkpoints of the
reference frameworks (``block0..4`` Sequentials of conv, BN, ReLU, ``classifier`` head) import under
``REFERENCE_KEYS`` (models/imported.py), which moves each block's conv/BN at Sequential index 3k / 3k + 1 to
conv k of the stem or stage (after the stage's leading max-pool, if it has one).
"""
from __future__ import annotations

import re
from functools import partial

from torch import nn

from .blocks import ConvBNAct, Stage, StagedClassifier, init_weights
from .imported import renamer
from .registry import register

CONFIGS: dict[str, list[list[int]]] = {
    "S": [[64], [128], [256], [512], [512]],
    "A": [[64], [128], [256, 256], [512, 512], [512, 512]],
    "B": [[64, 64], [128, 128], [256, 256], [512, 512], [512, 512]],
    "D": [[64, 64], [128, 128], [256, 256, 256], [512, 512, 512], [512, 512, 512]],
    "E": [[64, 64], [128, 128], [256, 256, 256, 256], [512, 512, 512, 512], [512, 512, 512, 512]],
}


def _reference_layer(m: re.Match) -> str:
    """``block{b}.{3k + j}.`` (j: 0 conv, 1 BN) -> conv ``k`` of the stem (b = 0) or of stage ``b - 1``,
    whose index 0 is the max-pool for stages 0-2."""
    block, (k, part) = int(m.group(1)), divmod(int(m.group(2)), 3)
    where = "stem" if block == 0 else f"stages.{block - 1}"
    return f"{where}.{k + int(1 <= block <= 3)}.{('conv', 'bn')[part]}."


REFERENCE_KEYS = renamer((r"^block(\d)\.(\d+)\.", _reference_layer))


def _convs(cin: int, widths: list[int]) -> list[ConvBNAct]:
    layers = []
    for w in widths:
        layers.append(ConvBNAct(cin, w, 3, bias=True))
        cin = w
    return layers


class VGG(StagedClassifier):
    def __init__(self, cfg: str, num_classes: int):
        blocks = CONFIGS[cfg]
        stem = Stage(*_convs(3, blocks[0]))
        stages = []
        for i in range(1, 5):
            pool = [nn.MaxPool2d(2, 2)] if i < 4 else []  # the fourth pool is conditional: stage_input
            stages.append(Stage(*pool, *_convs(blocks[i - 1][-1], blocks[i])))
        super().__init__(stem, stages, blocks[4][-1], num_classes)
        self.pool3 = nn.MaxPool2d(2, 2)
        init_weights(self, linear="normal")

    def stage_input(self, i, h, x):
        return self.pool3(h) if i == 3 and x.shape[2] == 64 else h


for _name, _cfg in (("vgg8", "S"), ("vgg11", "A"), ("vgg13", "B"), ("vgg16", "D"), ("vgg19", "E")):
    register(_name, REFERENCE_KEYS)(partial(VGG, _cfg))
