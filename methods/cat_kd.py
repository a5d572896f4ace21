"""``cat_kd``: CAT-KD. Guo, Yan, Li & Lin, "Class Attention Transfer Based Knowledge Distillation", CVPR 2023.

A network that ends in global average pooling and a linear head is the same network as its last stage
followed by a 1x1-conv classifier and the pooling; that conv's outputs are the class activation maps (CAMs),
whose spatial means are the logits. CAT-KD transfers the teacher's CAMs of **every** class, average-pooled to
a small grid, with an MSE; the student keeps its CE on the labels. With F = ``Features.stages[-1]`` (the map
the head pools) and W the network's own head weight (N x C; ``methods.cam``):

    A_c[h, w] = sum_k W[c, k] * F[k, h, w]        every class c; no ReLU, no bias
    P         = pool_r(A)                         adaptive average pooling to r x r (``cam_resolution``)
    P         = P / ||P||_2 per (sample, class) over its r x r cells       (only if ``normalize``)
    L_CAT     = mean over (b, c, i, j) of (P_s - P_t)^2                     (element mean, B * N * r * r)
    L         = ce_weight * CE(z_s, y) + cat_weight * L_CAT                 (cat_weight: the paper's beta)

Each network uses its own head, so the channel counts may differ; the two maps may have different sizes
(resnet32x4's 8x8 against ShuffleV1's 4x4): both are pooled to the same r x r. A grid finer than a map
repeats its cells, which only rescales the loss. Pooling is linear and the CAM has no ReLU, so the map is
pooled before the head is applied (pool_r(W F) = W pool_r(F): r*r positions instead of H*W).

Defaults: the authors' CIFAR-100 configuration for resnet32x4 -> resnet8x4: ``ce_weight`` 1, ``cat_weight``
15, ``cam_resolution`` 2, ``normalize`` false. Their configurations set all three per pair (teacher ->
student: beta, grid, normalisation): resnet56 -> resnet20 0.7, 2, off; resnet110 -> resnet32 1.8, 2, off;
resnet32x4 -> resnet8x4 15, 2, off; wrn_40_2 -> wrn_16_2 12, 2, off; wrn_40_2 -> wrn_40_1 1.5, 2, off;
vgg13 -> vgg8 4.5, 2, off; resnet32x4 -> ShuffleV1 600, 4, on; wrn_40_2 -> ShuffleV1 80, 4, on;
resnet32x4 -> ShuffleV2 600, 4, on; vgg13 -> MobileNetV2 15, 2, on; ResNet50 -> MobileNetV2 40, 2, on
(protocols/write.py applies them): the normalisation is on for the cross-family pairs only. Their
framework-wide fallback (beta 400, normalisation on) is used by no CIFAR-100 pair. The scale of L_CAT
depends on the architectures, so set ``cat_weight`` for any other pair.

Published (CIFAR-100, resnet32x4 -> resnet8x4, the paper's CIFAR-100 table): 76.91% top-1.

Deviation: the authors train the student in its converted form, whose head is a bias-free 1x1 conv before
the pooling; the zoo student keeps its Linear head. The CAMs (bias excluded) and so L_CAT are the same
functions of the weights; only the student's logits carry the head's learnable per-class bias. (The
teacher's conversion drops its bias, which CAT-KD never reads.) Not exposed: CAT alone (``ce_weight`` 0
gives it) and the CAM binarisation and class-subset transfer of the paper's CAT analysis, which are not
part of CAT-KD.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from pydantic import Field

from .base import Method, MethodParams, cross_entropy_term
from .cam import check_linear_heads, class_activation_maps, l2_normalize_maps
from .common import pool_to
from .registry import register


def pooled_class_maps(feat: torch.Tensor, weight: torch.Tensor, resolution: int) -> torch.Tensor:
    """Every class's CAM of a map [B, C, H, W] under a head weight [N, C], average-pooled: [B, N, r, r]."""
    return class_activation_maps(pool_to(feat, resolution), weight, agg="sum", relu=False)


def cat_loss(feat_s: torch.Tensor, weight_s: torch.Tensor, feat_t: torch.Tensor, weight_t: torch.Tensor,
             resolution: int = 2, normalize: bool = False) -> torch.Tensor:
    """Element-mean squared difference of the student's and the teacher's pooled (optionally L2-normalised)
    CAMs of every class; each network's map [B, C_*, H_*, W_*] with its own head weight [N, C_*]."""
    p_s = pooled_class_maps(feat_s, weight_s, resolution)
    p_t = pooled_class_maps(feat_t, weight_t, resolution)
    if p_s.shape != p_t.shape:
        raise ValueError(f"pooled CAM shapes differ: {tuple(p_s.shape)} vs {tuple(p_t.shape)}")
    if normalize:
        p_s, p_t = l2_normalize_maps(p_s), l2_normalize_maps(p_t)
    return F.mse_loss(p_s, p_t)


class CATKDParams(MethodParams):
    ce_weight: float = Field(1.0, ge=0)
    cat_weight: float = Field(15.0, ge=0)  # beta
    cam_resolution: int = Field(2, ge=1)  # side r of the pooled CAM grid
    normalize: bool = False  # L2-normalise each pooled CAM over its r x r cells


@register
class CATKD(Method):
    name = "cat_kd"
    Params = CATKDParams

    def __init__(self, params: CATKDParams, ctx):
        super().__init__(params, ctx)
        check_linear_heads(self.name, ctx)

    def losses(self, student, teacher, targets, index, epoch):
        p = self.params
        l_cat = cat_loss(student[1].stages[-1], self.ctx.student.classifier.weight,
                         teacher[1].stages[-1].detach(), self.ctx.teacher.classifier.weight.detach(),
                         p.cam_resolution, p.normalize)
        return {"ce": cross_entropy_term(student[0], targets, p.ce_weight), "cat": p.cat_weight * l_cat}
