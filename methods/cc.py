"""``cc``: Correlation Congruence. Peng, Jin, Liu, Li, Wu, Liu, Zhou & Zhang, "Correlation Congruence for
Knowledge Distillation", ICCV 2019 (Sec. 3: the correlation congruence loss; Sec. 3.3: the Gaussian RBF
kernel approximated by its Taylor series).

Besides each sample's own output, the student copies the correlations *between* the samples of a batch,
measured in a learnt embedding of each network's pooled features:

    e_s = W_s f_s + b_s,   e_t = W_t f_t + b_t              (linear maps to feat_dim = 128, both learnt)
    u_i = e_i / ||e_i||_2                                   (per network)
    k(u_i, u_j) = exp(-gamma * ||u_i - u_j||^2) = exp(-2 gamma) * exp(2 gamma u_i . u_j)
               ~= exp(-2 gamma) * sum_{p=0..P} (2 gamma)^p / p! * (u_i . u_j)^p     (P = 2, gamma = 0.4)
    C_ij    = k(u_i, u_j)                                   (a B x B correlation matrix per network)
    L_cc    = (1 / B^2) * ||C_s - C_t||_F^2                 (the mean of the squared entry differences)
    L       = w_ce * CE(z_s, y) + w_cc * L_cc

The paper pairs CC with KD (alpha * CE + (1 - alpha) * KD + beta * CC); as in RepDistiller's CC entry
(``-a 0``: no KD term), kdlens' ``cc`` is CE + CC.

Features: the pooled (GAP) embedding ``Features.pooled`` (RepDistiller ``feat[-1]``; torchdistill
``avgpool``). The input widths of the two linear maps come from the actual pooled sizes of the pair
(``models.base.feature_shapes``), so every zoo pair is served. The teacher's features are detached: its
map is trained by the loss only, as in RepDistiller and torchdistill. ``extra_parameter_count`` counts
both maps: (d_s + 1) * 128 + (d_t + 1) * 128.

Defaults: gamma = 0.4, P = 2 (Sec. 3.3, and torchdistill's CCKD config), feat_dim = 128 (RepDistiller
and torchdistill), ce_weight = 1. ``cc_weight`` = 10 is kdlens' own: the paper's beta is not quoted here,
and the reference weights belong to other formulas -- RepDistiller's CIFAR-100 ``-b 0.02`` multiplies
its ``Correlation`` loss, mean_i sum_d |e_s - e_t|_{i,d} * |e_s - e_t|_{i+1,d} on unnormalised
embeddings (not this kernel), and torchdistill's ImageNet 0.003 multiplies the *unsquared* Frobenius
norm / B^2 of kernels on unnormalised embeddings. On unit vectors every C_ij lies in [0.23, 0.95], so
L_cc is small: 0.04-0.07 at initialisation for kdlens' default profile pair (its trained resnet20
teacher, a fresh resnet8, three batches of 64 training images, two student seeds), where the CC term
sends the student 0.08-0.12x the gradient norm of the labels' CE per unit of cc_weight. 10 puts it at
the order of the CE's (0.8-1.2x); at 0.02 it would teach next to nothing. With an untrained teacher the
relations are near-degenerate (ratio 0.002 per unit weight, resnet32x4 -> resnet8x4 at initialisation),
so the right weight depends on the teacher: set ``methods.cc.cc_weight`` for the pair being run.
Published CIFAR-100 top-1: the paper predates the resnet32x4 -> resnet8x4 benchmark (CRD, ICLR 2020)
and reports no run of it; the numbers others publish for "CC" on the zoo pairs (CRD's table) come from
RepDistiller's different loss. None is quoted here.

Deviations from torchdistill's CCKDLoss (the reference implementation of this kernel formula):
* The embeddings are L2-normalised before the kernel: the expansion is the Taylor series of the RBF
  kernel only for unit vectors (||u_i - u_j||^2 = 2 - 2 u_i . u_j), and without it both learnt maps
  can shrink the loss by shrinking their outputs.
* The loss is the *squared* Frobenius distance / B^2, as the paper writes it (torchdistill: unsquared).
* One [B, B] product instead of a Python loop over rows. Computed in float32 with autocast off
  (``common.full_precision``), as the other batch-Gram losses here (SP, RKD, PKT).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from models.base import feature_shapes

from .base import Method, MethodParams, cross_entropy_term
from .common import full_precision
from .registry import register


def correlation_matrix(u: torch.Tensor, gamma: float, order: int) -> torch.Tensor:
    """[B, D] unit rows -> [B, B] order-P Taylor expansion of exp(-gamma * ||u_i - u_j||^2)."""
    cos = u @ u.t()
    series = sum((2.0 * gamma) ** p / math.factorial(p) * cos**p for p in range(order + 1))
    return math.exp(-2.0 * gamma) * series


@full_precision
def cc_loss(e_s: torch.Tensor, e_t: torch.Tensor, gamma: float = 0.4, order: int = 2) -> torch.Tensor:
    """Mean squared difference of the two networks' correlation matrices over the B x B entries.

    ``e_t`` is not detached: the teacher's embedding map is learnt through this loss.
    """
    c_s = correlation_matrix(F.normalize(e_s.flatten(1), p=2, dim=1), gamma, order)
    c_t = correlation_matrix(F.normalize(e_t.flatten(1), p=2, dim=1), gamma, order)
    return (c_s - c_t).pow(2).mean()


class CCParams(MethodParams):
    ce_weight: float = Field(1.0, ge=0)
    cc_weight: float = Field(10.0, ge=0)  # kdlens' own (see the module docstring)
    feat_dim: int = Field(128, ge=1)
    gamma: float = Field(0.4, gt=0)  # RBF kernel width
    order: int = Field(2, ge=0)  # P, the order of the Taylor expansion


@register
class CC(Method):
    name = "cc"
    Params = CCParams

    def __init__(self, params: CCParams, ctx):
        super().__init__(params, ctx)
        d_s = math.prod(feature_shapes(ctx.student, ctx.input_size)["pooled"])
        d_t = math.prod(feature_shapes(ctx.teacher, ctx.input_size)["pooled"])
        self.embed_s = nn.Linear(d_s, params.feat_dim)
        self.embed_t = nn.Linear(d_t, params.feat_dim)

    def losses(self, student, teacher, targets, index, epoch):
        p = self.params
        e_s = self.embed_s(student[1].pooled.flatten(1))
        e_t = self.embed_t(teacher[1].pooled.detach().flatten(1))
        return {
            "ce": cross_entropy_term(student[0], targets, p.ce_weight),
            "cc": p.cc_weight * cc_loss(e_s, e_t, p.gamma, p.order),
        }
