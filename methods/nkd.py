"""``nkd``: Normalized KD. Yang, Zeng, Li, Zhang, Yuan & Li, "From Knowledge Distillation to
Self-Knowledge Distillation: A Unified Approach with Normalized Loss and Customized Soft Labels", ICCV
2023 (the NKD loss; official code: yzd-v/cls_KD, ``NKDLoss``).

Classical KD splits into a target part and a non-target part whose weight 1 - t_g shrinks as the
teacher grows confident. NKD keeps the target part in cross-entropy form at T = 1 and *normalises* the
non-target part: both non-target distributions are renormalised over the N - 1 non-target classes, so
their weight no longer depends on t_g. With g the ground-truth class of a sample,

    s_g, t_g        = softmax(z_s)[g], softmax(z_t)[g]                  (T = 1)
    s_hat, t_hat    = softmax over the N-1 non-target logits of z_s / T and z_t / T
    L_target        = -(1/B) * sum_b t_g * log s_g
    L_non_target    = -T^2 * (1/B) * sum_b sum_{j != g} t_hat_j * log s_hat_j
    L               = w_ce * CE(z_s, y) + L_target + gamma * L_non_target

Only the logits are used (every zoo pair is served, and the teacher cache can stand in for the teacher).
The two parts are logged as separate terms: ``nkd_target`` = L_target, ``nkd_non_target`` = gamma *
L_non_target. The non-target part is a cross-entropy, as in the reference: it equals T^2 * KL(t_hat ||
s_hat) plus the teacher's (constant) entropy, so it does not vanish when the student matches the
teacher, but its gradient does.

Defaults: the authors' CIFAR-100 configuration (cls_KD ``configs/distillers/cifar100/
res34_distill_res18_cifar.py``: T = 3, gamma = 3.5), CE weight 1 (their distiller adds the NKD loss to
the student's own CE). Their ImageNet CNN configurations (res34 -> res18, res50 -> MobileNet) and the
loss's own defaults use T = 1, gamma = 1.5: set ``methods.nkd`` for that. Published CIFAR-100 top-1 for
resnet32x4 -> resnet8x4: not quoted here.

At initialisation on kdlens' default profile pair (its trained resnet20 teacher, a fresh resnet8, three
batches of 64 training images) the non-target term at the defaults sends the student 4.3-5.3x the
gradient norm of the labels' CE, the target term about 1x.

Deviations: none in the math. The non-target distributions are the softmax over the N-1 non-target
logits, as the reference's mask selects them (the helper DKD uses, ``logits.binary_and_nontarget_log_probs``,
which upcasts float16 logits first, so the loss stays finite under autocast). The reference's soft-label
branch (``gt_label`` given as a distribution) is left out: kdlens' targets are class indices. (One
version of the reference's ``mmcls/distillation/losses/nkd.py`` builds its mask with ``scatter_(1, label,
1)``, which keeps the target class in the "non-target" softmax; its other versions and the mmcls-1.x
port ``mmcls/models/dis_losses/nkd.py`` exclude it, as the normalisation requires and as here.)
"""
from __future__ import annotations

import torch
from pydantic import Field

from .base import Method, cross_entropy_term
from .logits import LogitParams, binary_and_nontarget_log_probs, distillation_logits
from .registry import register


def nkd_loss(logits_s: torch.Tensor, logits_t: torch.Tensor, targets: torch.Tensor,
             temperature: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(L_target, L_non_target): batch means, the non-target part times T^2 and without gamma."""
    if logits_s.shape[1] < 2:
        raise ValueError("NKD needs at least two classes")
    logits_t = logits_t.detach()
    log_bin_s, _ = binary_and_nontarget_log_probs(logits_s, targets, 1.0)  # column 0: log s_g at T = 1
    log_bin_t, _ = binary_and_nontarget_log_probs(logits_t, targets, 1.0)
    _, log_hat_s = binary_and_nontarget_log_probs(logits_s, targets, temperature)
    _, log_hat_t = binary_and_nontarget_log_probs(logits_t, targets, temperature)
    target = -(log_bin_t[:, 0].exp() * log_bin_s[:, 0]).mean()
    non_target = -(log_hat_t.exp() * log_hat_s).sum(dim=1).mean() * temperature**2
    return target, non_target


class NKDParams(LogitParams):
    ce_weight: float = Field(1.0, ge=0)
    gamma: float = Field(3.5, ge=0)  # non-target weight
    T: float = Field(3.0, gt=0)  # temperature of the non-target part only


@register
class NKD(Method):
    name = "nkd"
    Params = NKDParams
    uses_features = False

    def losses(self, student, teacher, targets, index, epoch):
        p = self.params
        target, non_target = nkd_loss(*distillation_logits(student[0], teacher[0], p), targets, p.T)
        return {
            "ce": cross_entropy_term(student[0], targets, p.ce_weight),
            "nkd_target": target,
            "nkd_non_target": p.gamma * non_target,
        }
