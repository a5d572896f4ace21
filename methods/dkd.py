"""``dkd``: Decoupled Knowledge Distillation. Zhao, Cui, Song, Qiu, Liang, "Decoupled Knowledge
Distillation", CVPR 2022 (official code: mdistiller).

Classical KD splits into a target-class part and a non-target-class part, weighted separately.
With p = softmax(z / T) over the N classes and g the ground-truth class of a sample:

    b       = [p_g, 1 - p_g]                                   (binary target / rest distribution)
    p_hat_j = softmax over the N-1 non-target logits z_j / T, j != g
    TCKD    = T^2 * (1/B) * sum_b KL(b_t     || b_s)
    NCKD    = T^2 * (1/B) * sum_b KL(p_hat_t || p_hat_s)
    L       = w_ce * CE(z_s, y) + min(epoch / warmup, 1) * (alpha * TCKD + beta * NCKD)

Only the logits are used, so every student/teacher pair of the zoo is served.

Defaults (mdistiller CIFAR defaults): ce_weight=1.0, alpha=1.0,
beta=8.0, T=4.0, warmup=20 (epochs). beta is tuned **per pair** in the reference configs (mdistiller:
res56->res20 2, res110->res32 2, res32x4->res8x4 8, vgg13->vgg8 6, wrn40_2->wrn16_2 6, wrn40_2->wrn40_1 6,
vgg13->MV2 6, res32x4->ShuV1 8, res32x4->ShuV2 8, res50->MV2 8, wrn40_2->ShuV1 8; res50->wrn16_2 6, the
DKD paper's value; ImageNet r34->r18 beta 0.5 / T 1 / warmup 1, r50->mv1 beta 2 / T 1 / warmup 1): set
``methods.dkd.beta`` for the pair being run.

The two parts are reported as separate named terms, ``tckd`` and ``nckd`` (each already multiplied by
its weight and the warm-up factor), so their magnitudes and gradient norms are logged on their own.

Deviation from upstream (numerics only): mdistiller forms p_hat by subtracting 1000 from the target
logit before the softmax and takes log(b) of summed probabilities; here p_hat is the exact softmax over
the non-target logits and log b comes from log-sum-exp, which is the same value without the
approximation and stays finite under float16 autocast.
"""
from __future__ import annotations

from pydantic import Field

from .base import Method, cross_entropy_term
from .common import warmup_factor
from .logits import LogitParams, distillation_logits, dkd_loss
from .registry import register


class DKDParams(LogitParams):
    ce_weight: float = Field(1.0, ge=0)
    alpha: float = Field(1.0, ge=0)  # TCKD weight
    beta: float = Field(8.0, ge=0)  # NCKD weight: tuned per pair (see the module docstring)
    T: float = Field(4.0, gt=0)
    warmup: int = Field(20, ge=0)  # epochs of linear loss warm-up (0 = none)


@register
class DKD(Method):
    name = "dkd"
    Params = DKDParams
    uses_features = False

    def losses(self, student, teacher, targets, index, epoch):
        p = self.params
        tckd, nckd = dkd_loss(*distillation_logits(student[0], teacher[0], p), targets, p.T)
        w = warmup_factor(epoch, p.warmup)
        return {
            "ce": cross_entropy_term(student[0], targets, p.ce_weight),
            "tckd": w * p.alpha * tckd,
            "nckd": w * p.beta * nckd,
        }
