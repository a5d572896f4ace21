"""``fitnet``: FitNets. Romero, Ballas, Kahou, Chassang, Gatta & Bengio, "FitNets: Hints for Thin Deep
Nets", ICLR 2015.

One "hint": the student's guided map f_s is sent through a trainable regressor r (ConvReg) onto the
teacher's hint map f_t (same C, H, W), and

    L = w_ce * CE(z_s, y) + w_hint * mean_{b,c,h,w} (r(f_s) - f_t)^2

ConvReg (mdistiller's; ``methods.common.conv_regressor``): a 3x3 stride-2 conv if H_s = 2 H_t, a 4x4 stride-2
transposed conv if 2 H_s = H_t, otherwise a valid conv of kernel (1 + H_s - H_t) (1x1 when the sizes
match), then BatchNorm, then ReLU. It is trained jointly with the student (one stage, no separate hint
pre-training as in the original paper, following mdistiller/RepDistiller).

Features: the post-activation ``stages[hint_stage]`` of both nets; the default ``hint_stage = 1`` is the
references' hint layer ``feat[2]`` (the middle stage of CIFAR ResNets). Negative indices count from the deep
end of each net. With the default, every zoo pair is served: the stage-1 maps are 16x16 or 8x8 in every
family, so H_s/H_t is 1, 2 or 1/2. Other choices of ``hint_stage`` raise MethodNotApplicable when the
student map is smaller than the teacher's and not exactly half its size (ConvReg is undefined there), or
when the index does not exist in one of the nets.

Defaults (mdistiller, RepDistiller "hint"): hint_stage = 1, hint_weight = 100, ce_weight = 1.0.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from pydantic import Field

from models.base import feature_shapes

from .base import Method, MethodParams, cross_entropy_term
from .common import check_stage_index, conv_regressor
from .registry import register


def hint_loss(f_s_regressed: torch.Tensor, f_t: torch.Tensor) -> torch.Tensor:
    """Element-mean squared error between the regressed student map and the teacher's hint map."""
    return F.mse_loss(f_s_regressed, f_t)


class FitNetParams(MethodParams):
    hint_stage: int = 1
    ce_weight: float = Field(1.0, ge=0)
    hint_weight: float = Field(100.0, ge=0)


@register
class FitNet(Method):
    name = "fitnet"
    Params = FitNetParams

    def __init__(self, params: FitNetParams, ctx):
        super().__init__(params, ctx)
        s = feature_shapes(ctx.student, ctx.input_size)["stages"]
        t = feature_shapes(ctx.teacher, ctx.input_size)["stages"]
        check_stage_index(params.hint_stage, len(s), len(t), "hint_stage")
        self.regressor = conv_regressor(s[params.hint_stage], t[params.hint_stage], relu=True)

    def losses(self, student, teacher, targets, index, epoch):
        p = self.params
        f_s = student[1].stages[p.hint_stage]
        f_t = teacher[1].stages[p.hint_stage].detach()
        return {
            "ce": cross_entropy_term(student[0], targets, p.ce_weight),
            "hint": p.hint_weight * hint_loss(self.regressor(f_s), f_t),
        }
