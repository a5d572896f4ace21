"""``mlkd``: Multi-Level Logit Distillation. Jin, Wang & Lin, "Multi-Level Logit Distillation", CVPR 2023
(Sec. 3: prediction augmentation over several temperatures; instance-, batch- and class-level alignment).

Each batch is seen twice (dataset/augment.py): the standard training view w and a strong view s (its own
crop and flip, two RandAugment operations and a Cutout, as the authors' training pipeline draws it); the
student and the teacher run on both, the teacher on the same images as the student. With Q = softmax(z / T)
the batch's [B, N] predictions at temperature T, and T over the temperatures 𝒯 (the prediction
augmentation):

    instance(v) = Σ_T T² (1/B) Σ_b KL(q_t[b] || q_s[b])       KD at every temperature, on view v
    batch       = Σ_T (1/B) ||Q_s Q_sᵀ − Q_t Q_tᵀ||²_F         the B x B Gram matrices (input correlation)
    class       = Σ_T (1/N) ||Q_sᵀ Q_s − Q_tᵀ Q_t||²_F         the N x N class correlations

    L = ce_weight (CE(z_s^w, y) + CE(z_s^s, y))
        + kd_weight (m_B instance(w) + instance(s) + m_B batch(w) + m_N class(w))

batch and class on the standard view. m_B and m_N are the authors' confidence masks: c_b = max_j p_t[b, j]
(the teacher's standard-view softmax at T = 1) and a sample is kept where c_b <= the batch's median of c;
likewise a class where its summed probability Σ_b p_t[b, j] <= the median over classes. The authors'
code multiplies each mask into a term it has already averaged over the batch (the per-sample reduction is
commented out), so a mask acts as the *fraction* it keeps: m_B = mean_b [c_b <= median c] (1/2 for an
even batch of distinct confidences), m_N = mean_j [Σ_b p_t[b, j] <= median]. That is what their published
numbers were trained with, so that is what ``confidence_weights`` computes; it keeps the less confident
half (the masks say ``<=``), not the more confident one.

The authors' code writes every temperature's term out by hand; against it:

* the one deviation: its strong-view instance term reads the *standard* view's logits at T = 2 and 6 (a
  copy of the standard-view block left unedited, which adds unmasked standard-view KD at those two
  temperatures); here every temperature of instance(s) reads the strong view, as its other three do;
* it computes batch and class terms on the strong view as well but leaves them out of its loss; so
  does L.

``standardize`` (Sun et al., CVPR 2024, methods/logits.py) z-scores the logits of the instance-level terms
(the KL at every temperature), as the MLKD code of Sun et al. does; the batch and class matrices, the masks
and the CE read the raw logits. Their runs replace the temperature 4 by the base temperature 2, i.e.
𝒯 = {2, 2, 3, 5, 6}, with kd_weight 9 (their command line; the CE weight of those runs is not stated).

Logits only (``uses_features = False``): the teacher cache serves mlkd when it holds the strong view too
(``teacher_cache.extra_views: [strong]``); otherwise the teacher runs live and the run says why. Computed in
float32 under autocast (Gram matrices of probabilities lose the digits they need in float16).

Defaults: the authors' CIFAR-100 settings: 𝒯 = {2, 3, 4, 5, 6}, ce_weight 0.1, kd_weight 0.9 (their
configuration's KD weights; T = 4 is its base temperature). Their CIFAR-100 schedules: batch 64, SGD at lr
0.025 for 240 epochs; the ShuffleNet and MobileNetV2 students 480 epochs at 0.01 or 0.0025, per pair
(protocols/write.py).

Published (CIFAR-100, top-1, as Sun et al., CVPR 2024, Tables 1 and 2 list MLKD / MLKD + standardisation):
resnet32x4 -> resnet8x4 77.08 / 78.28; vgg13 -> vgg8 75.18 / 75.22; wrn_40_2 -> wrn_40_1 75.35 / 75.56;
wrn_40_2 -> wrn_16_2 76.63 / 76.95; resnet56 -> resnet20 72.19 / 72.33; resnet110 -> resnet32 74.11 / 74.32;
resnet32x4 -> ShuffleV2 78.44 / 78.76; vgg13 -> MobileNetV2 70.57 / 70.94; ResNet50 -> MobileNetV2
71.04 / 71.19.
"""
from __future__ import annotations

from typing import Annotated

import torch
import torch.nn.functional as F
from pydantic import Field

from dataset.augment import STRONG

from .base import Method, cross_entropy_term
from .common import full_precision
from .logits import LogitParams, distillation_logits, kd_loss
from .registry import register


@full_precision
def instance_alignment(logits_s: torch.Tensor, logits_t: torch.Tensor, temperatures) -> torch.Tensor:
    """Σ_T T² * batch-mean KL(softmax(z_t/T) || softmax(z_s/T))."""
    return sum(kd_loss(logits_s, logits_t, t) for t in temperatures)


@full_precision
def batch_alignment(logits_s: torch.Tensor, logits_t: torch.Tensor, temperatures) -> torch.Tensor:
    """Σ_T ||P_s P_sᵀ − P_t P_tᵀ||²_F / B, P = softmax(z/T) [B, N]."""
    total = logits_s.new_zeros(())
    for t in temperatures:
        p_s, p_t = F.softmax(logits_s / t, dim=1), F.softmax(logits_t / t, dim=1)
        total = total + (p_s @ p_s.T - p_t @ p_t.T).pow(2).sum() / p_s.shape[0]
    return total


@full_precision
def class_alignment(logits_s: torch.Tensor, logits_t: torch.Tensor, temperatures) -> torch.Tensor:
    """Σ_T ||P_sᵀ P_s − P_tᵀ P_t||²_F / N, P = softmax(z/T) [B, N]."""
    total = logits_s.new_zeros(())
    for t in temperatures:
        p_s, p_t = F.softmax(logits_s / t, dim=1), F.softmax(logits_t / t, dim=1)
        total = total + (p_s.T @ p_s - p_t.T @ p_t).pow(2).sum() / p_s.shape[1]
    return total


def _share_at_or_below_median(values: torch.Tensor) -> torch.Tensor:
    return (values <= torch.quantile(values, 0.5)).to(values.dtype).mean()


@full_precision
def confidence_weights(logits_t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(m_B, m_N): the share of the batch whose teacher confidence max_j p_t[b, j] is at or below its median,
    and the share of the classes whose summed probability Σ_b p_t[b, j] is at or below theirs (p_t at
    T = 1; the median interpolated between the two middle values, as numpy's percentile)."""
    p_t = F.softmax(logits_t.detach(), dim=1)
    return _share_at_or_below_median(p_t.max(dim=1).values), _share_at_or_below_median(p_t.sum(dim=0))


class MLKDParams(LogitParams):
    ce_weight: float = Field(0.1, ge=0)  # each view's CE
    kd_weight: float = Field(0.9, ge=0)  # every alignment term
    temperatures: list[Annotated[float, Field(gt=0)]] = Field([2.0, 3.0, 4.0, 5.0, 6.0], min_length=1)


@register
class MLKD(Method):
    name = "mlkd"
    Params = MLKDParams
    uses_features = False
    extra_views = (STRONG,)
    task_terms = frozenset({"ce", "ce_strong"})

    def losses(self, student, teacher, targets, index, epoch, views):
        p = self.params
        strong = views[STRONG]
        z_weak, z_strong = student[0], strong.student[0]
        t_weak, t_strong = teacher[0].detach(), strong.teacher[0].detach()
        sample_weight, class_weight = confidence_weights(t_weak)
        ts = p.temperatures
        return {
            "ce": cross_entropy_term(z_weak, targets, p.ce_weight),
            "ce_strong": cross_entropy_term(z_strong, targets, p.ce_weight),
            "instance": p.kd_weight * sample_weight * instance_alignment(*distillation_logits(z_weak, t_weak, p), ts),
            "instance_strong": p.kd_weight * instance_alignment(*distillation_logits(z_strong, t_strong, p), ts),
            "batch": p.kd_weight * sample_weight * batch_alignment(z_weak, t_weak, ts),
            "class": p.kd_weight * class_weight * class_alignment(z_weak, t_weak, ts),
        }
