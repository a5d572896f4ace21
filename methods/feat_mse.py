"""``feat_mse``: layer-feature regression, the distillation used by Cheng, Rao, Chen & Zhang, "Explaining
Knowledge Distillation by Quantifying the Knowledge", CVPR 2020 (its experimental setup).

The student learns to regress the teacher's PRE-ReLU feature of one layer l with an element-mean MSE:

    L_feat = mean_{b,c,h,w} ( g(pool(f_s^pre)) - pool(f_t^pre) )^2
    L      = w_ce * CE(z_s, y) + w_feat * L_feat                      (joint mode, the default)

Features: ``preact[stage]`` of both nets (``stage`` is a Python index into each net's stage list, so the
default -1 is each net's last stage, the map the head pools before its final activation; negative indices
count from the deep end and are the sensible choice across families with different stage counts). The paper
distils the same architecture into itself, so no connector exists there; here g is a 1x1 conv + BN
(``methods.common.conv1x1_bn``) only when the channel counts differ, identity otherwise, and the larger map
is adaptive-average-pooled to the smaller H x W (the student before g). Every zoo pair is served with the
default stage; an index missing from either net raises MethodNotApplicable.

Protocol. The paper trains in two phases: (1) 150 epochs regressing layer l alone (SGD, momentum 0.9,
weight decay 1e-4), (2) 100 epochs with CE on the layers above l, the layers up to l frozen.

* ``two_phase = False`` (default) approximates this with the joint loss above, all student layers trained.
* ``two_phase = True`` implements it: a ``Phase`` "regress" of ``phase_epochs`` epochs at ``phase_lr``
  (momentum 0.9, weight decay 1e-4 as in the paper) trains, on ``w_feat * L_feat`` alone, exactly the student
  parameters that the chosen pre-activation depends on (found by autograd connectivity on a dummy forward,
  so it is family-agnostic) plus the connector; during it only those modules are in train mode. The main
  training then uses CE alone, and with ``freeze_lower = True`` (the paper) those lower parameters are frozen
  (``requires_grad = False``, set when the method is built, so the trainer leaves them out of its optimiser;
  the phase re-enables them for its own duration). Still differing from the paper: phase 2 runs on the
  trainer's optimiser and LR schedule (the paper: lr 1e-2 ResNet / 1e-3 VGG with ReduceLROnPlateau), and the
  frozen layers' BatchNorms still update their running statistics while the student is in train mode.

Defaults (no joint-loss weight exists in the paper): stage = -1, ce_weight = 1.0, feat_weight = 100 (the
weight of the analogous element-mean feature regression FitNet in RepDistiller / mdistiller), two_phase = False,
phase_epochs = 30 (the length of RepDistiller's init stages), phase_lr = 0.05 (mdistiller's CIFAR
student LR), freeze_lower = True (the paper's setup).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from models.base import feature_shapes

from .base import Method, MethodParams, Phase, cross_entropy_term
from .common import check_stage_index, conv1x1_bn, pool_to
from .registry import register

PHASE_WEIGHT_DECAY = 1e-4  # paper's phase-1 weight decay (its experimental setup)


def feat_mse_loss(f_s: torch.Tensor, f_t: torch.Tensor) -> torch.Tensor:
    """Element-mean squared error between two maps of equal shape."""
    return F.mse_loss(f_s, f_t)


def params_up_to(model: nn.Module, stage: int, input_size: int) -> list[nn.Parameter]:
    """The trainable parameters of ``model`` that its ``preact[stage]`` depends on (autograd reachability)."""
    params = [p for p in model.parameters() if p.requires_grad]
    was_training = model.training
    model.eval()
    try:
        x = torch.zeros(2, 3, input_size, input_size, device=params[0].device)
        with torch.enable_grad():
            _, feats = model(x)
            grads = torch.autograd.grad(feats.preact[stage].sum(), params, allow_unused=True)
    finally:
        model.train(was_training)
    return [p for p, g in zip(params, grads) if g is not None]


class FeatMSEParams(MethodParams):
    stage: int = -1
    ce_weight: float = Field(1.0, ge=0)
    feat_weight: float = Field(100.0, ge=0)
    two_phase: bool = False
    phase_epochs: int = Field(30, ge=1)
    phase_lr: float = Field(0.05, gt=0)
    freeze_lower: bool = True


@register
class FeatMSE(Method):
    name = "feat_mse"
    Params = FeatMSEParams

    def __init__(self, params: FeatMSEParams, ctx):
        super().__init__(params, ctx)
        s = feature_shapes(ctx.student, ctx.input_size)["preact"]
        t = feature_shapes(ctx.teacher, ctx.input_size)["preact"]
        check_stage_index(params.stage, len(s), len(t), "stage")
        c_s, c_t = s[params.stage][0], t[params.stage][0]
        self.connector = conv1x1_bn(c_s, c_t) if c_s != c_t else nn.Identity()
        self._lower: list[nn.Parameter] = []
        if params.two_phase:
            self._lower = params_up_to(ctx.student, params.stage, ctx.input_size)
            if params.freeze_lower:
                for p in self._lower:
                    p.requires_grad_(False)

    def regression(self, student, teacher) -> torch.Tensor:
        f_s = student[1].preact[self.params.stage]
        f_t = teacher[1].preact[self.params.stage].detach()
        h = min(f_s.shape[-1], f_t.shape[-1])
        return feat_mse_loss(self.connector(pool_to(f_s, h)), pool_to(f_t, h))

    def losses(self, student, teacher, targets, index, epoch):
        p = self.params
        terms = {"ce": cross_entropy_term(student[0], targets, p.ce_weight)}
        if not p.two_phase:
            terms["feat"] = p.feat_weight * self.regression(student, teacher)
        return terms

    def _phase_losses(self, student, teacher, targets, index, epoch):
        return {"feat": self.params.feat_weight * self.regression(student, teacher)}

    def phases(self) -> list[Phase]:
        p = self.params
        if not p.two_phase:
            return []
        lower = {id(q) for q in self._lower}
        modules = [m for m in self.ctx.student.modules()
                   if any(id(q) in lower for q in m.parameters(recurse=False))]
        return [Phase(name="regress", epochs=p.phase_epochs, lr=p.phase_lr,
                      parameters=self._lower + list(self.connector.parameters()), losses=self._phase_losses,
                      weight_decay=PHASE_WEIGHT_DECAY, train_modules=modules + [self])]
