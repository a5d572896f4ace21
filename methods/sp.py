"""``sp``: Similarity-Preserving Knowledge Distillation. Tung & Mori, ICCV 2019.

Samples that the teacher maps to similar activations should be mapped to similar activations by the
student. With A the [B, C*H*W] matrix of one feature map flattened per sample,

    G      = A A^T                                   (B x B batch similarity)
    G_hat  = G with every row L2-normalised: G_hat[i] = G[i] / ||G[i]||_2
    L_sp   = (1 / B^2) * || G_hat^t - G_hat^s ||_F^2

    L = w_ce * CE(z_s, y) + w_sp * L_sp

Features: the last stage map ``Features.stages[-1]`` (the post-activation, pre-GAP map). This is
mdistiller's default (its SP takes the last feature map). It is the same tensor as RepDistiller's
``feat[-2]``: in our contract the reference's ``feat[-2]`` (last map) *is* ``stages[-1]`` (see
models/base.py), so the two references agree here. KD-Zoo instead averages the loss over all three
residual stages; that variant is not implemented. G is B x B whatever the channel count and spatial
size, so SP has no learnable parts and is defined for every zoo pair. The teacher side is detached.

Defaults (mdistiller and RepDistiller): ce_weight = 1.0, sp_weight = 3000.

Deviations: none. Computed in float32 with autocast off (``common.full_precision``): the Gram entries
of a wide flattened map can overflow float16.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from pydantic import Field

from .base import Method, MethodParams, cross_entropy_term
from .common import full_precision
from .registry import register


def batch_similarity(f: torch.Tensor) -> torch.Tensor:
    """[B, ...] -> [B, B] Gram matrix of the per-sample flattened features, rows L2-normalised."""
    a = f.reshape(f.shape[0], -1)
    return F.normalize(a @ a.t(), p=2, dim=1)


@full_precision
def sp_loss(f_s: torch.Tensor, f_t: torch.Tensor) -> torch.Tensor:
    """||G_hat_t - G_hat_s||_F^2 / B^2 for one student/teacher feature pair (any shapes, same batch)."""
    b = f_s.shape[0]
    diff = batch_similarity(f_t.detach()) - batch_similarity(f_s)
    return diff.pow(2).sum() / (b * b)


class SPParams(MethodParams):
    ce_weight: float = Field(1.0, ge=0)
    sp_weight: float = Field(3000.0, ge=0)


@register
class SP(Method):
    name = "sp"
    Params = SPParams

    def losses(self, student, teacher, targets, index, epoch):
        p = self.params
        return {
            "ce": cross_entropy_term(student[0], targets, p.ce_weight),
            "sp": p.sp_weight * sp_loss(student[1].stages[-1], teacher[1].stages[-1].detach()),
        }
