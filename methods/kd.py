"""``kd``: Hinton et al., "Distilling the Knowledge in a Neural Network" (2015).

    L = w_ce * CE(z_s, y) + w_kd * T^2 * (1/B) * sum_b KL( softmax(z_t/T) || softmax(z_s/T) )

The T^2 factor keeps the soft-target gradient on the scale of the CE gradient as T changes.
Defaults are the CIFAR recipe of mdistiller/RepDistiller: T=4, w_ce=0.1, w_kd=0.9.
"""
from __future__ import annotations

from pydantic import Field

from .base import Method, cross_entropy_term
from .logits import LogitParams, distillation_logits, kd_loss
from .registry import register


class KDParams(LogitParams):
    T: float = Field(4.0, gt=0)
    ce_weight: float = Field(0.1, ge=0)
    kd_weight: float = Field(0.9, ge=0)


@register
class KD(Method):
    name = "kd"
    Params = KDParams
    uses_features = False

    def losses(self, student, teacher, targets, index, epoch):
        p = self.params
        z_s, z_t = distillation_logits(student[0], teacher[0], p)
        return {
            "ce": cross_entropy_term(student[0], targets, p.ce_weight),
            "kd": p.kd_weight * kd_loss(z_s, z_t, p.T),
        }
