"""``pkt``: Probabilistic Knowledge Transfer. Passalis & Tefas, "Learning Deep Representations with
Probabilistic Knowledge Transfer", ECCV 2018.

Each network's embedding space defines, for every sample i of the batch, a conditional distribution
over the batch's samples j, built from cosine similarities; the student matches the teacher's:

    f_hat_i = f_i / (||f_i||_2 + eps)
    K_ij    = (f_hat_i . f_hat_j + 1) / 2                 (cosine similarity mapped to [0, 1]; j = i included)
    p_ij    = K_ij / sum_j' K_ij'                          (each row a conditional probability)
    L_pkt   = (1 / B^2) * sum_{i,j} p^t_ij * log( (p^t_ij + eps) / (p^s_ij + eps) ),   eps = 1e-7

    L = w_ce * CE(z_s, y) + w_pkt * L_pkt

Features: the pooled (GAP) embedding ``Features.pooled`` (mdistiller; RepDistiller ``feat[-1]``; KD-Zoo
"pooled feat"). The kernel matrices are B x B, so the two embeddings may have any widths: PKT has no
learnable parts and is defined for every zoo pair. The teacher side is detached.

Defaults (mdistiller and RepDistiller): ce_weight = 1.0, pkt_weight = 30000, eps = 1e-7
(KD-Zoo uses 10000 and eps = 1e-6 instead).

Deviations: none in the math. The reference also zeroes NaNs of the normalised embedding; with
``+ eps`` in the denominator that only happens for non-finite inputs, which the trainer refuses anyway.
Computed in float32 with autocast off (``common.full_precision``): log(p + 1e-7) needs it.
"""
from __future__ import annotations

import torch
from pydantic import Field

from .base import Method, MethodParams, cross_entropy_term
from .common import full_precision
from .registry import register


def cosine_conditionals(f: torch.Tensor, eps: float) -> torch.Tensor:
    """[B, D] -> [B, B] rows p_ij = ((cos_ij + 1) / 2) / sum_j ((cos_ij + 1) / 2)."""
    f = f / (f.norm(p=2, dim=1, keepdim=True) + eps)
    k = (f @ f.t() + 1.0) / 2.0
    return k / k.sum(dim=1, keepdim=True)


@full_precision
def pkt_loss(f_s: torch.Tensor, f_t: torch.Tensor, eps: float = 1e-7) -> torch.Tensor:
    """Mean over the B x B entries of p_t * log((p_t + eps) / (p_s + eps))."""
    f_s, f_t = f_s.flatten(1), f_t.detach().flatten(1)
    p_s, p_t = cosine_conditionals(f_s, eps), cosine_conditionals(f_t, eps)
    return (p_t * torch.log((p_t + eps) / (p_s + eps))).mean()


class PKTParams(MethodParams):
    ce_weight: float = Field(1.0, ge=0)
    pkt_weight: float = Field(30000.0, ge=0)
    eps: float = Field(1e-7, gt=0)


@register
class PKT(Method):
    name = "pkt"
    Params = PKTParams

    def losses(self, student, teacher, targets, index, epoch):
        p = self.params
        return {
            "ce": cross_entropy_term(student[0], targets, p.ce_weight),
            "pkt": p.pkt_weight * pkt_loss(student[1].pooled, teacher[1].pooled.detach(), p.eps),
        }
