"""``dist``: DIST. Huang, You, Wang, Qian & Xu, "Knowledge Distillation from A Stronger Teacher",
NeurIPS 2022 (its inter- and intra-class relation losses; official code: hunto/DIST_KD).

KL-based KD asks the student to reproduce the teacher's probabilities exactly; DIST only asks for the
same *relations*, measured by Pearson correlation, which is invariant to a positive scale and a shift
of either side. With P = softmax(Z / T) for a batch of B samples over N classes (rows = samples):

    rho(u, v)  = (u - mean u) . (v - mean v) / (||u - mean u|| * ||v - mean v|| + eps),   eps = 1e-8
    L_inter    = T^2 * (1 - (1/B) * sum_b rho(P_s[b, :], P_t[b, :]))     (each sample's class ranking)
    L_intra    = T^2 * (1 - (1/N) * sum_c rho(P_s[:, c], P_t[:, c]))     (each class's spread over the batch)
    L          = w_ce * CE(z_s, y) + beta * L_inter + gamma * L_intra

Only the logits are used (every zoo pair is served, and the teacher cache can stand in for the teacher).
The two relations are logged as separate terms, ``dist_inter`` = beta * L_inter and ``dist_intra`` =
gamma * L_intra.

Defaults: the paper's CIFAR-100 setting, beta = gamma = 2, T = 4, CE weight 1 (its ImageNet setting is
beta = gamma = 1, T = 1: set ``methods.dist`` for that). Published CIFAR-100 top-1 for resnet32x4 ->
resnet8x4 and the other pairs: not quoted here.

Gradient scale: rho divides by the spread of P_s, which is tiny for a fresh student at T = 4 (its
probabilities are nearly uniform), so the relations pull hard at first. At initialisation on kdlens'
default profile pair (its trained resnet20 teacher, a fresh resnet8, three batches of 64 training
images) the two terms at beta = gamma = 2 send the student 28-31x (inter) and 56-78x (intra) the
gradient norm of the labels' CE, against KD's 1.9-2.1x at its defaults: the health check's "drowns the
labels" flag may fire in the first epochs.

Deviations: none in the math (eps = 1e-8 in the denominator as the reference's ``cosine_similarity``).
Computed in float32 with autocast off (``common.full_precision``): eps = 1e-8 is below float16's
smallest subnormal, so a collapsed (constant) probability column would divide 0 by 0 in half precision.
"""
from __future__ import annotations

import torch
from pydantic import Field

from .base import Method, cross_entropy_term
from .common import full_precision
from .logits import LogitParams, distillation_logits
from .registry import register

PEARSON_EPS = 1e-8


def pearson_rows(a: torch.Tensor, b: torch.Tensor, eps: float = PEARSON_EPS) -> torch.Tensor:
    """[R, M] x [R, M] -> [R] Pearson correlation of each row of ``a`` with the same row of ``b``."""
    a = a - a.mean(dim=1, keepdim=True)
    b = b - b.mean(dim=1, keepdim=True)
    return (a * b).sum(dim=1) / (a.norm(dim=1) * b.norm(dim=1) + eps)


@full_precision
def dist_loss(logits_s: torch.Tensor, logits_t: torch.Tensor,
              temperature: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(L_inter, L_intra), each T^2 * (1 - mean Pearson correlation), unweighted."""
    p_s = (logits_s / temperature).softmax(dim=1)
    p_t = (logits_t.detach() / temperature).softmax(dim=1)
    scale = temperature**2
    inter = scale * (1.0 - pearson_rows(p_s, p_t).mean())
    intra = scale * (1.0 - pearson_rows(p_s.t(), p_t.t()).mean())
    return inter, intra


class DISTParams(LogitParams):
    ce_weight: float = Field(1.0, ge=0)
    beta: float = Field(2.0, ge=0)  # inter-class relation weight
    gamma: float = Field(2.0, ge=0)  # intra-class relation weight
    T: float = Field(4.0, gt=0)


@register
class DIST(Method):
    name = "dist"
    Params = DISTParams
    uses_features = False

    def losses(self, student, teacher, targets, index, epoch):
        p = self.params
        inter, intra = dist_loss(*distillation_logits(student[0], teacher[0], p), p.T)
        return {
            "ce": cross_entropy_term(student[0], targets, p.ce_weight),
            "dist_inter": p.beta * inter,
            "dist_intra": p.gamma * intra,
        }
