"""``fsp``: Flow of Solution Procedure. Yim, Joo, Bae & Kim, "A Gift from Knowledge Distillation: Fast
Optimization, Network Minimization and Transfer Learning", CVPR 2017 (Sec. 3.2: the FSP matrix, Eq. 1;
Sec. 3.3: its L2 loss, Eq. 2, and the two-stage learning procedure). Follows RepDistiller (``FSP``, its
``init`` stage and run script).

The knowledge is how a net's consecutive maps relate: for two maps F1 [C1, h, w] and F2 [C2, h, w] of one
net (the larger of the two average-pooled to the smaller's h x w, as RepDistiller does),

    G(F1, F2)[i, j] = (1/(h*w)) * sum_{s,t} F1[i, s, t] * F2[j, s, t]            (FSP matrix, C1 x C2)
    L_fsp = sum_pairs mean_{b,i,j} (G_s - G_t)^2                                  (consecutive map pairs)

    L_init = fsp_weight * L_fsp           (phase "init": student body only)
    L_main = ce_weight * CE(z_s, y)       (main training)

Two stages, as in the paper and RepDistiller:

* **Phase "init"** (``Phase``; the paper's first stage, RepDistiller's ``init``): ``init_epochs`` epochs at
  ``init_lr`` (SGD, momentum 0.9, weight decay 5e-4) on L_init alone, training every student parameter
  except the head ``classifier`` (RepDistiller's ``model_s.get_feat_modules()``), the student in train
  mode and the teacher in eval mode.
* **Main training**: CE alone (the paper's second stage trains on the task loss; RepDistiller's
  ``train_distill`` sets the FSP term to 0 there and its run script has ``-a 0``, so no KD either).

The method has no learnable parts (``extra_parameter_count`` is 0).

Features: the post-activation ``stem`` followed by the ``stages`` (RepDistiller's ``feat[:-1]``), skipping a
stage that re-exposes the previous one (``distinct_preact_stages``, which finds it by its repeated
pre-activation: WRN's final tap ReLU(BN(group 3)), so WRN contributes the stem and its three groups, exactly
the reference's maps). The two nets' map lists are paired from the deep end (``methods.common.pair_from_end``)
and G_s is compared with G_t entry by entry, so every paired map needs the same channel count in student and
teacher (RepDistiller raises otherwise): a mismatch is MethodNotApplicable. Spatial sizes may differ between
the nets. Applicable zoo pairs are therefore the same-width ones: CIFAR ResNets among themselves
(resnet8..110), resnet8x4/32x4, wrn_16_2/40_2, wrn_16_1/40_1, the VGGs, ResNet18/34, and any architecture
with itself.

Defaults: ce_weight 1 (RepDistiller ``-r 1``), fsp_weight 1 (RepDistiller's init sums the pair losses
unweighted; its ``-b 50`` is never applied to FSP), init_epochs 30 (RepDistiller ``--init_epochs``),
init_lr 0.05 (RepDistiller's init uses the student lr: 0.05, but 0.01 for MobileNetV2 / ShuffleNet students).

Published (CIFAR-100, resnet32x4 -> resnet8x4, RepDistiller's runs of this recipe): 72.62% top-1
(Tian, Krishnan & Isola, "Contrastive Representation Distillation", ICLR 2020, Table 1).

Deviations:
* The loss is RepDistiller's mean over the batch and the matrix entries; the paper writes the squared L2
  norm summed over the entries, with equal weights lambda_i per pair.
* kdlens' extra final tap of MobileNetV2 (1280 channels) and ShuffleV2 (1024) has its own BN, so it is kept:
  a MobileNetV2 or ShuffleV2 pair with itself gets one FSP matrix more than RepDistiller's.
"""
from __future__ import annotations

import torch
from pydantic import Field

from models.base import feature_shapes

from .base import Method, MethodNotApplicable, MethodParams, Phase, cross_entropy_term
from .common import align_spatial, body_parameters, distinct_preact_stages, full_precision, pair_from_end
from .registry import register


def fsp_matrix(f1: torch.Tensor, f2: torch.Tensor) -> torch.Tensor:
    """[B, C1, C2] flow matrix of two maps of one net, the larger pooled to the smaller's H x W first."""
    f1, f2 = align_spatial(f1, f2)
    return torch.einsum("bihw,bjhw->bij", f1, f2) / (f1.shape[-2] * f1.shape[-1])


@full_precision  # small differences of Gram entries need more than half precision
def fsp_loss(maps_s: list[torch.Tensor], maps_t: list[torch.Tensor]) -> torch.Tensor:
    """Sum over consecutive map pairs of the mean squared difference of the student's and teacher's FSP
    matrices (maps shallow to deep, paired map by map with equal channel counts)."""
    total = maps_s[0].new_zeros(())
    for k in range(len(maps_s) - 1):
        g_s = fsp_matrix(maps_s[k], maps_s[k + 1])
        g_t = fsp_matrix(maps_t[k], maps_t[k + 1])
        total = total + (g_s - g_t).pow(2).mean()
    return total


def map_indices(model, n_stages: int) -> list[int]:
    """Indices into ``[stem] + stages`` of the maps FSP relates: the stem and the distinct stages."""
    return [0] + [i + 1 for i in distinct_preact_stages(model, n_stages)]


class FSPParams(MethodParams):
    ce_weight: float = Field(1.0, ge=0)
    fsp_weight: float = Field(1.0, gt=0)  # scale of L_init in the phase
    init_epochs: int = Field(30, ge=1)  # 0 would leave plain CE: the transfer happens only in this phase
    init_lr: float = Field(0.05, gt=0)


@register
class FSP(Method):
    name = "fsp"
    Params = FSPParams

    def __init__(self, params: FSPParams, ctx):
        super().__init__(params, ctx)
        s, t = feature_shapes(ctx.student, ctx.input_size), feature_shapes(ctx.teacher, ctx.input_size)
        s_maps, t_maps = [s["stem"]] + s["stages"], [t["stem"]] + t["stages"]
        # (student map, teacher map) index pairs into [stem] + stages, deepest with deepest
        self.pairs = pair_from_end(map_indices(ctx.student, len(s["stages"])),
                                   map_indices(ctx.teacher, len(t["stages"])))
        if len(self.pairs) < 2:
            raise MethodNotApplicable("fsp relates consecutive maps and needs at least two paired maps")
        c_s, c_t = [s_maps[i][0] for i, _ in self.pairs], [t_maps[j][0] for _, j in self.pairs]
        if c_s != c_t:
            raise MethodNotApplicable(
                "fsp compares student and teacher FSP matrices entry by entry, so paired maps need equal "
                f"channel counts; student/teacher channels {c_s} vs {c_t} (stem and stages, paired from "
                "the deep end)")

    def paired_maps(self, student, teacher) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """(student maps, teacher maps), shallow to deep."""
        s_maps, t_maps = [student[1].stem] + student[1].stages, [teacher[1].stem] + teacher[1].stages
        return [s_maps[i] for i, _ in self.pairs], [t_maps[j].detach() for _, j in self.pairs]

    def init_losses(self, student, teacher, targets, index, epoch):
        """The phase's loss: the FSP loss alone."""
        return {"fsp": self.params.fsp_weight * fsp_loss(*self.paired_maps(student, teacher))}

    def phases(self) -> list[Phase]:
        p = self.params
        return [Phase(name="init", epochs=p.init_epochs, lr=p.init_lr, parameters=body_parameters(self.ctx.student),
                      losses=self.init_losses, train_modules=[self.ctx.student])]

    def losses(self, student, teacher, targets, index, epoch):
        return {"ce": cross_entropy_term(student[0], targets, self.params.ce_weight)}
