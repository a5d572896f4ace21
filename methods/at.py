"""``at``: Attention Transfer. Zagoruyko & Komodakis, "Paying More Attention to Attention: Improving the
Performance of Convolutional Neural Networks via Attention Transfer", ICLR 2017.

Per stage, the spatial attention map of a [B,C,H,W] feature f is

    a(f) = Q / ||Q||_2,   Q[b, hw] = (1/C) * sum_c |f[b, c, hw]|^p        (flattened to HW, p = 2)

and the stage loss is the mean over (B * HW) of (a(f_s) - a(f_t))^2. The larger of the two maps is first
adaptive-average-pooled to the smaller one's H x W. The method loss is the sum over the aligned stages:

    L = w_ce * CE(z_s, y) + w_at * sum_stages mean_{b,hw} (a(f_s) - a(f_t))^2

Features: the post-activation ``stages`` (mdistiller's ``feats[1:]`` / RepDistiller's ``feat[1:-1]``). When
the two nets have different stage counts (3 for CIFAR ResNets and ShuffleV1, 4 for VGG, WRN, ResNet18/34/50
and ShuffleV2, 5 for MobileNetV2) the last k = min(n_s, n_t) stages are paired from the deep end
(``methods.common.pair_from_end``). Deviation: kdlens' extra final tap (WRN's ReLU(BN(group 3)), MobileNetV2's
1280-channel conv, ShuffleV2's 1024-channel conv) adds one stage the references do not have: wrn->wrn pairs
get a fourth term, and in cross-family pairs such as wrn_40_2->ShuffleV1, vgg13->MobileNetV2 or
resnet32x4->ShuffleV2 the pairing differs from the references' zip from the shallow end (identical whenever
the counts agree). AT has no learnable parts and is defined for every zoo pair.

Defaults (mdistiller CIFAR/ImageNet yaml, RepDistiller): p = 2, at_weight = 1000,
ce_weight = 1.0.

Few classes, short schedules: on kdlens's default profile (10 classes, 20 epochs, resnet20 -> resnet8)
the term at 1000 sends 43x the labels' gradient into the student in epoch 1 (then about 1x) and never
falls below 0.56 (the student cannot draw the teacher's maps), and the student ends below the CE
baseline (86.0% against 89.6%, seed 0). At 100 it reaches 91.1%, so the default profile's params.yaml
sets at_weight 100; the schema default stays the papers' 1000.

Deviations: the paper's |f|^p is used (mdistiller/RepDistiller omit the abs; identical for p = 2 and for
the post-ReLU maps used here). The channel mean instead of the paper's channel sum only rescales Q, which
the L2 normalisation removes.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from pydantic import Field

from .base import Method, MethodParams, cross_entropy_term
from .common import align_spatial, pair_from_end
from .registry import register


def attention_map(f: torch.Tensor, p: float) -> torch.Tensor:
    """[B,C,H,W] -> [B,H*W]: L2-normalised channel mean of |f|^p."""
    return F.normalize(f.abs().pow(p).mean(dim=1).flatten(1), dim=1)


def at_loss(f_s: torch.Tensor, f_t: torch.Tensor, p: float = 2.0) -> torch.Tensor:
    """One stage: mean over (B*HW) of the squared difference of the attention maps (larger map pooled)."""
    f_s, f_t = align_spatial(f_s, f_t)
    return (attention_map(f_s, p) - attention_map(f_t, p)).pow(2).mean()


class ATParams(MethodParams):
    p: float = Field(2.0, gt=0)
    ce_weight: float = Field(1.0, ge=0)
    at_weight: float = Field(1000.0, ge=0)


@register
class AT(Method):
    name = "at"
    Params = ATParams

    def losses(self, student, teacher, targets, index, epoch):
        p = self.params
        pairs = pair_from_end(student[1].stages, teacher[1].stages)
        loss = sum(at_loss(f_s, f_t.detach(), p.p) for f_s, f_t in pairs)
        return {
            "ce": cross_entropy_term(student[0], targets, p.ce_weight),
            "at": p.at_weight * loss,
        }
