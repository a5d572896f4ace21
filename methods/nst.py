"""``nst``: Neural Selective Transfer. Huang & Wang, "Like What You Like: Knowledge Distill via Neuron
Selectivity Transfer", arXiv 1707.01219, 2017.

Each channel of a [B,C,H,W] map is one sample of a distribution: its spatial vector (length N = H*W) is
L2-normalised, x_i = f[b,i,:] / ||f[b,i,:]||. Student and teacher channel sets are compared with the
squared MMD under the polynomial kernel k(x, y) = (x . y)^d + c with d = 2, c = 0:

    MMD^2 = mean_{i,i'} k(t_i, t_i') + mean_{j,j'} k(s_j, s_j') - 2 mean_{j,i} k(s_j, t_i)

each mean running over the batch and over all channel pairs (B*C_t*C_t, B*C_s*C_s, B*C_s*C_t), and

    L = w_ce * CE(z_s, y) + w_nst * sum_stages MMD^2(stage)

Computation: for one sample with channel rows X [C_x, N] and Y [C_y, N],
sum_{i,j} (x_i . y_j)^2 = ||X Y^T||_F^2 = <X^T X, Y^T Y>_F, so each sum is a batched Gram product of size
[B, C_x, C_y] or [B, N, N], whichever is smaller; no [B, C, C, N] tensor is ever built (the references
broadcast one). The teacher-teacher term carries no gradient (the teacher map is detached).

Features: the post-activation ``stages`` (mdistiller; RepDistiller ``feat[1:-1]``), paired from the deep end when the
stage counts differ (``methods.common.pair_from_end``), the larger map adaptive-average-pooled to the smaller
H x W. Channel counts may differ (MMD compares sets of any sizes), so NST has no learnable parts and is
defined for every zoo pair. Deviation: kdlens' extra final tap (WRN's ReLU(BN(group 3)), MobileNetV2's
1280-channel conv, ShuffleV2's 1024-channel conv) adds one stage the references do not have: wrn->wrn pairs
get a fourth term, and in cross-family pairs such as wrn_40_2->ShuffleV1, vgg13->MobileNetV2 or
resnet32x4->ShuffleV2 the pairing differs from the references' zip from the shallow end (identical whenever
the counts agree).

Defaults (mdistiller, RepDistiller): nst_weight = 50, ce_weight = 1.0, d = 2, c = 0 (fixed: the Gram identity above
is what makes the d = 2, c = 0 kernel cheap).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from pydantic import Field

from .base import Method, MethodParams, cross_entropy_term
from .common import align_spatial, full_precision, pair_from_end
from .registry import register


def _unit_channels(f: torch.Tensor) -> torch.Tensor:
    """[B,C,H,W] -> [B,C,H*W] with every channel's spatial vector L2-normalised."""
    return F.normalize(f.flatten(2), dim=2)


@full_precision
def poly2_kernel_mean(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """mean over (b, i, j) of (x[b,i] . y[b,j])^2 for x [B,Cx,N], y [B,Cy,N], via the cheaper Gram identity.

    In float32 at least (``full_precision``): the sums reach C_x*C_y, beyond float16 range under AMP.
    """
    cx, cy, n = x.shape[1], y.shape[1], x.shape[2]
    if cx * cy <= n * n:
        total = torch.bmm(x, y.transpose(1, 2)).pow(2).sum(dim=(1, 2))  # ||X Y^T||_F^2, [B,Cx,Cy]
    else:
        gx = torch.bmm(x.transpose(1, 2), x)  # X^T X, [B,N,N]
        gy = gx if y is x else torch.bmm(y.transpose(1, 2), y)
        total = (gx * gy).sum(dim=(1, 2))  # <X^T X, Y^T Y>_F
    return total.mean() / (cx * cy)


@full_precision
def nst_loss(f_s: torch.Tensor, f_t: torch.Tensor) -> torch.Tensor:
    """Squared MMD (poly kernel d=2, c=0) between the L2-normalised channel sets of one stage."""
    f_s, f_t = align_spatial(f_s, f_t)
    s, t = _unit_channels(f_s), _unit_channels(f_t.detach())
    return poly2_kernel_mean(t, t) + poly2_kernel_mean(s, s) - 2.0 * poly2_kernel_mean(s, t)


class NSTParams(MethodParams):
    ce_weight: float = Field(1.0, ge=0)
    nst_weight: float = Field(50.0, ge=0)


@register
class NST(Method):
    name = "nst"
    Params = NSTParams

    def losses(self, student, teacher, targets, index, epoch):
        p = self.params
        pairs = pair_from_end(student[1].stages, teacher[1].stages)
        loss = sum(nst_loss(f_s, f_t.detach()) for f_s, f_t in pairs)
        return {
            "ce": cross_entropy_term(student[0], targets, p.ce_weight),
            "nst": p.nst_weight * loss,
        }
