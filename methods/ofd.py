"""``ofd``: A Comprehensive Overhaul of Feature Distillation. Heo, Kim, Yun, Park, Kwak & Choi, ICCV 2019.

OFD distils the teacher's features *before* the ReLU, through a connector on the student side and a
"partial" L2 that ignores the parts of the teacher map the ReLU would erase anyway.

* Connector per stage: 1x1 conv (no bias, He-normal) + BatchNorm, student channels -> teacher channels
  (``methods.common.conv1x1_bn``), trained with the student.
* Margin per teacher channel c, from the BN whose output is the teacher's pre-activation map
  (``teacher.bn_before_relu()``), reading its affine parameters as a Gaussian N(m, s^2) with s = |gamma_c|,
  m = beta_c: margin_c = E[x | x < 0] = m - s * phi(m/s) / Phi(-m/s) when Phi(-m/s) > 1e-3, else -3 s
  (phi/Phi: standard normal PDF/CDF). Computed once at construction (the teacher is frozen) and kept as
  buffers.
* Partial L2, per element, with t the teacher's pre-activation and s the connector output:
      (s - margin)^2  if s > margin and t <= margin
      (s - t)^2       if s > t      and margin < t <= 0
      (s - t)^2       if t > 0
      0               otherwise
  i.e. with t' = max(t, margin): (s - t')^2 * [s > t' or t' > 0]. Summed over C, H, W; mean over B.
* Stage i of the n aligned stages (0 = shallowest) is divided by 2^(n-1-i): the deepest weighs 1.

    L = w_ce * CE(z_s, y) + w_ofd * sum_i partial_L2_i / 2^(n-1-i)

Features: ``preact`` of every stage (mdistiller's ``preact_feats[1:]``), paired from the deep end when the
stage counts differ (``methods.common.pair_from_end``); the larger map is adaptive-average-pooled to the
smaller H x W (the student before its connector, or the teacher target: mdistiller's "t pooled to the student
size"). A stage whose pre-activation merely repeats the previous one is skipped on either side
(``distinct_preact_stages``): WRN's final tap re-exposes group 3's pre-activation (the same BN output), so
WRN contributes its three groups, exactly the reference's ``preact_feats[1:]``, and wrn->wrn pairs keep the
reference's stage weights 1/4, 1/2, 1. Served for every zoo pair: every zoo model exposes
``bn_before_relu()`` (ShuffleNetV2 through a per-channel routed view). A teacher without it raises
MethodNotApplicable.

Defaults (mdistiller's CIFAR yaml): ofd_weight = 1e-3, ce_weight = 1.0.

Deviations:
* Teacher mode: kdlens keeps the teacher in eval mode (running BN statistics, nothing updated). Upstream
  OFD (the original code and mdistiller's override of ``train()``) leaves the teacher in train
  mode, so its BN uses batch statistics and its running statistics drift during distillation.
* Margins use |gamma| as the standard deviation (gamma may be negative; the Gaussian reading needs s > 0).
"""
from __future__ import annotations

import math

import torch
from pydantic import Field
from torch import nn

from models.base import feature_shapes

from .base import Method, MethodNotApplicable, MethodParams, cross_entropy_term
from .common import conv1x1_bn, distinct_preact_stages, pair_from_end, pool_to
from .registry import register

_CDF_FLOOR = 1e-3  # below this Phi(-m/s) the conditional mean is numerically unreliable: use -3 s


def ofd_margin(gamma: torch.Tensor, beta: torch.Tensor) -> torch.Tensor:
    """Per-channel E[x | x < 0] for x ~ N(beta, gamma^2), or -3|gamma| when P(x < 0) <= 1e-3."""
    s = gamma.detach().double().abs().clamp_min(1e-12)
    m = beta.detach().double()
    z = m / s
    cdf = torch.special.ndtr(-z)
    pdf = torch.exp(-0.5 * z * z) / math.sqrt(2.0 * math.pi)
    margin = torch.where(cdf > _CDF_FLOOR, m - s * pdf / cdf.clamp_min(_CDF_FLOOR), -3.0 * s)
    return margin.to(gamma.dtype)


def ofd_loss(s: torch.Tensor, t: torch.Tensor, margin: torch.Tensor) -> torch.Tensor:
    """Partial L2 between student s and teacher t ([B,C,H,W]); margin [C]. Sum over C,H,W, mean over B."""
    t = torch.maximum(t, margin.view(1, -1, 1, 1).to(t.dtype))
    mask = (s > t) | (t > 0)
    return ((s - t).pow(2) * mask).sum() / s.shape[0]


class OFDParams(MethodParams):
    ce_weight: float = Field(1.0, ge=0)
    ofd_weight: float = Field(1e-3, ge=0)


@register
class OFD(Method):
    name = "ofd"
    Params = OFDParams

    def __init__(self, params: OFDParams, ctx):
        super().__init__(params, ctx)
        try:
            bns = ctx.teacher.bn_before_relu()
        except NotImplementedError as e:
            raise MethodNotApplicable(f"ofd needs the teacher's pre-ReLU BatchNorms: {e}") from e
        s = feature_shapes(ctx.student, ctx.input_size)["preact"]
        t = feature_shapes(ctx.teacher, ctx.input_size)["preact"]
        if len(bns) != len(t):
            raise MethodNotApplicable(f"teacher exposes {len(bns)} pre-ReLU BatchNorms for {len(t)} stages")
        # (student stage, teacher stage) index pairs, deepest with deepest
        pairs = pair_from_end(distinct_preact_stages(ctx.student, len(s)), distinct_preact_stages(ctx.teacher, len(t)))
        self.pairs = pairs
        self.connectors = nn.ModuleList(conv1x1_bn(s[i][0], t[j][0]) for i, j in pairs)
        for k, (_, j) in enumerate(pairs):
            margin = ofd_margin(bns[j].weight, bns[j].bias)
            if margin.numel() != t[j][0]:
                raise MethodNotApplicable(f"teacher BN {j} has {margin.numel()} channels, its stage {t[j][0]}")
            self.register_buffer(f"margin{k}", margin.float().clone())

    def margins(self) -> list[torch.Tensor]:
        return [getattr(self, f"margin{k}") for k in range(len(self.pairs))]

    def losses(self, student, teacher, targets, index, epoch):
        p = self.params
        n = len(self.pairs)
        loss = 0.0
        for k, (conn, margin, (i, j)) in enumerate(zip(self.connectors, self.margins(), self.pairs)):
            f_s, f_t = student[1].preact[i], teacher[1].preact[j].detach()
            h = min(f_s.shape[-1], f_t.shape[-1])
            loss = loss + ofd_loss(conn(pool_to(f_s, h)), pool_to(f_t, h), margin) / 2 ** (n - 1 - k)
        return {
            "ce": cross_entropy_term(student[0], targets, p.ce_weight),
            "ofd": p.ofd_weight * loss,
        }
