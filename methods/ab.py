"""``ab``: Activation Boundaries. Heo, Lee, Yun & Choi, "Knowledge Transfer via Distillation of Activation
Boundaries Formed by Hidden Neurons", AAAI 2019 (Sec. 3: the margin-based alternative to the activation-
transfer loss, through a connector, summed over layers; then the two-step training scheme). Follows
RepDistiller (``ABLoss``, its ``init`` stage and run script) and the authors' code (bhheo/AB_distillation).

AB transfers *where* the teacher's neurons switch on, not their values. With t the teacher's pre-activation
map, s the connected student map and the margin m, per element

    ab(s, t) = (s + m)^2 * [s > -m and t <= 0]  +  (s - m)^2 * [s <= m and t > 0]
             = max(0, m + s)^2 if t <= 0,  max(0, m - s)^2 if t > 0

(the student is pushed at least m beyond zero on the teacher's side of the boundary). Summed over C, H, W
and averaged over the batch per paired stage k = 0..n-1 (0 = shallowest), the deepest stage weighing 1, the
next 1/2, then 1/4 (RepDistiller's ``w = 2^(k-n+1)``; the authors' 1, 1/2, 1/4):

    L_init = ab_weight * sum_k AB_k / 2^(n-1-k)        (phase "init": connectors + student body)
    L_main = ce_weight * CE(z_s, y)                       (main training)

Two steps, as in the paper and both reference codes:

* **Phase "init"** (``Phase``; the paper's initialisation, RepDistiller's ``init``): ``init_epochs`` epochs
  at ``init_lr`` (SGD, momentum 0.9, weight decay 5e-4) on L_init alone, training the connectors and every
  student parameter except the head ``classifier`` (RepDistiller's ``model_s.get_feat_modules()``), with
  the student and the connectors in train mode and the teacher in eval mode.
* **Main training**: CE alone. RepDistiller's AB recipe is ``-r 1 -a 0 -b 1`` and its ``train_distill``
  sets the AB term to 0 in this stage ("can also add loss to this stage"), so neither AB nor KD is part
  of it; kdlens trains with the method's own terms only, so there is no AB term here (the published
  number below is that recipe's). The authors' CIFAR script instead trains this stage on KD alone; that
  variant is not offered.

The connectors are created with ``requires_grad=False``, so the main optimiser never holds them (they
are unused there); the phase trains them whatever their flag and hands it back. Their weights are in the
method's state dict, so a resumed run (which skips the phases) restores them.

Features: ``preact`` of every stage, paired from the deep end when the stage counts differ
(``methods.common.pair_from_end``), skipping a stage whose pre-activation repeats the previous one
(``distinct_preact_stages``: WRN's final tap), so wrn->wrn pairs get the reference's three stages and
weights. Per pair, the larger map is adaptive-average-pooled to the smaller H x W (the student before its
connector, or the teacher target). Connector: none where the channel counts agree (both references: an
identity), else a 1x1 conv (no bias, He-normal) + BN, student -> teacher channels (the authors' connector;
``methods.common.conv1x1_bn``). Every zoo pair is served; resnet32x4 -> resnet8x4 and the other equal-width
pairs add no parameters, resnet32x4 -> ShuffleV1 adds 324,355 and ResNet50 -> MobileNetV2 2.83M.

Defaults: ce_weight 1 (RepDistiller ``-r 1``), margin 1.0 (both references), ab_weight 3e-3 (both
references scale the loss by 3/1000), init_epochs 30 (RepDistiller ``--init_epochs``), init_lr 0.05
(RepDistiller's init uses the student lr: 0.05, but 0.01 for MobileNetV2 / ShuffleNet students: set
``methods.ab.init_lr`` for those).

Published (CIFAR-100, resnet32x4 -> resnet8x4, RepDistiller's runs of this recipe): 73.17% top-1
(Tian, Krishnan & Isola, "Contrastive Representation Distillation", ICLR 2020, Table 1).

Deviations:
* A student map of another size is average-pooled to the teacher's (or the teacher target to the
  student's); RepDistiller's connector is FitNet's ConvReg without its ReLU (a stride-2 conv for a map
  twice the teacher's size, a 1x1 conv with bias + BN for equal sizes), and it needs equal stage counts.
* kdlens' extra final tap of MobileNetV2 (1280 channels) and ShuffleV2 (1024) has its own BN and is kept, so
  a pair with such a student is matched from the deep end (vgg13 -> MobileNetV2: student stages 1-4 with the
  teacher's 0-3), where RepDistiller zips its four taps with the teacher's four stages from the shallow end.
* The authors' script leaves the teacher in train mode during the initialisation (its BN then uses batch
  statistics); kdlens keeps it in eval mode, as RepDistiller does.
"""
from __future__ import annotations

import torch
from pydantic import Field
from torch import nn

from models.base import feature_shapes

from .base import Method, MethodParams, Phase, cross_entropy_term
from .common import body_parameters, conv1x1_bn, distinct_preact_stages, full_precision, pair_from_end, pool_to
from .registry import register


@full_precision  # a sum over C*H*W squares can pass float16's range
def ab_loss(s: torch.Tensor, t: torch.Tensor, margin: float = 1.0) -> torch.Tensor:
    """Activation-boundary margin loss between the connected student map s and the teacher's
    pre-activation t ([B,C,H,W] each): summed over C, H, W, averaged over B."""
    gap = torch.where(t > 0, margin - s, margin + s).clamp_min(0)
    return gap.pow(2).sum() / s.shape[0]


class ABParams(MethodParams):
    ce_weight: float = Field(1.0, ge=0)
    ab_weight: float = Field(3e-3, gt=0)  # scale of L_init in the phase (the references' 3/1000)
    margin: float = Field(1.0, gt=0)
    init_epochs: int = Field(30, ge=1)  # 0 would leave plain CE: the transfer happens only in this phase
    init_lr: float = Field(0.05, gt=0)


@register
class AB(Method):
    name = "ab"
    Params = ABParams

    def __init__(self, params: ABParams, ctx):
        super().__init__(params, ctx)
        s = feature_shapes(ctx.student, ctx.input_size)["preact"]
        t = feature_shapes(ctx.teacher, ctx.input_size)["preact"]
        # (student stage, teacher stage) index pairs, deepest with deepest
        self.pairs = pair_from_end(distinct_preact_stages(ctx.student, len(s)),
                                   distinct_preact_stages(ctx.teacher, len(t)))
        self.connectors = nn.ModuleList(nn.Identity() if s[i][0] == t[j][0] else conv1x1_bn(s[i][0], t[j][0])
                                        for i, j in self.pairs)
        self.connectors.requires_grad_(False)  # trained only in the phase

    def boundary_terms(self, student, teacher) -> list[torch.Tensor]:
        """AB_k per paired stage, shallow to deep, unweighted."""
        terms = []
        for conn, (i, j) in zip(self.connectors, self.pairs):
            f_s, f_t = student[1].preact[i], teacher[1].preact[j].detach()
            h = min(f_s.shape[-1], f_t.shape[-1])
            terms.append(ab_loss(conn(pool_to(f_s, h)), pool_to(f_t, h), self.params.margin))
        return terms

    def init_losses(self, student, teacher, targets, index, epoch):
        """The phase's loss: the stage-weighted AB loss alone."""
        terms = self.boundary_terms(student, teacher)
        n = len(terms)
        return {"ab": self.params.ab_weight * sum(term / 2 ** (n - 1 - k) for k, term in enumerate(terms))}

    def phases(self) -> list[Phase]:
        p = self.params
        return [Phase(name="init", epochs=p.init_epochs, lr=p.init_lr,
                      parameters=body_parameters(self.ctx.student) + list(self.connectors.parameters()), losses=self.init_losses,
                      train_modules=[self.ctx.student, self])]

    def losses(self, student, teacher, targets, index, epoch):
        return {"ce": cross_entropy_term(student[0], targets, self.params.ce_weight)}
