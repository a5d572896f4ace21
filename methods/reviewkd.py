"""``reviewkd``: Knowledge Review. Chen, Liu, Zhao, Jia, "Distilling Knowledge via Knowledge Review",
CVPR 2021 (mdistiller's REVIEWKD).

Each teacher stage is taught by a *fusion of the student's stages at and below the same depth*. The
student's maps f_1..f_n (shallow->deep) plus its pooled vector as a 1x1 map, f_{n+1}, are processed
**deepest first** by attention-based fusion (ABF) modules; ABF_i keeps a residual r_i:

    x_i        = BN(conv1x1(f_i))                                 (C_s,i -> mid channels)
    r_{n+1}    = x_{n+1}                                          (deepest: no fusion)
    r_i        = x_i * a_0 + up(r_{i+1}) * a_1,  [a_0, a_1] = sigmoid(conv1x1([x_i, up(r_{i+1})]))  (i <= n)
    r_i        = resize(r_i, teacher size of level i)             (nearest, only if the sizes differ)
    g_i        = BN(conv3x3(r_i))                                 (mid -> C_t,i channels)

with up() the nearest resize to f_i's size and mid = min(max_mid_channels, C of f_{n+1}). The targets are
the teacher's **pre-activation** stage maps t_1..t_n plus its pooled vector as a 1x1 map. The hierarchical
context loss (HCL) of one level compares the full maps and their average-pooled pyramids:

    HCL(g, t) = [ MSE(g, t) + sum_{k=1..} 0.5^k MSE(pool_{l_k}(g), pool_{l_k}(t)) ] / (1 + sum_k 0.5^k),
                l_k running over {4, 2, 1} restricted to l < H  (MSE = mean over all elements)

    L = w_ce * CE(z_s, y) + reviewkd_weight * min(epoch / warmup, 1) * sum_i HCL(g_i, t_i)

Defaults (mdistiller CIFAR yaml resnet32x4->resnet8x4): ce_weight=1.0, reviewkd_weight=5.0, warmup=20,
max_mid_channels=512, student_preact=False (the student's post-activation maps, as on CIFAR; the ImageNet
r34->r18 config uses the pre-activation ones).

Shapes and channels. mdistiller hard-codes the per-level spatial sizes and channel counts in the config
(the CIFAR defaults fit resnet8x4/resnet32x4 only). Here every size and channel count is derived
from the actual student/teacher feature shapes (``models.base.feature_shapes``), so any pair of the zoo
works: the ABF of level i reads the student's channel count of level i and produces the teacher's
channel count of level i, at the spatial size of the teacher's level-i map in the current batch (so an
input size other than ``ctx.input_size`` also works). When the two networks have different numbers of stages
(3 for CIFAR ResNets/ShuffleV1, 4 for VGG/WRN/ResNet18-50/ShuffleV2, 5 for MobileNetV2), the stage lists
are **aligned from the end**: with n = min(#student stages, #teacher stages), the last n stages of each
are paired (the deepest with the deepest), and the shallower extra stages of the deeper network are
unused. The pooled level is always paired with the pooled level.

Other notes: the teacher stays in eval mode (as in mdistiller); the conv weights of the ABFs use
kaiming-uniform(a=1) initialisation as in the reference; nearest resizing works in both directions, so
a student map smaller than the teacher's (e.g. MobileNetV2's 2x2 vs a 4x4 VGG map) is upsampled.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from models.base import feature_shapes

from .base import Method, MethodParams, cross_entropy_term
from .common import warmup_factor
from .registry import register

HCL_LEVELS = (4, 2, 1)


def hcl_level(f_s: torch.Tensor, f_t: torch.Tensor) -> torch.Tensor:
    """Hierarchical context loss of one level: full-map MSE plus halving-weight pooled-pyramid MSEs."""
    loss = F.mse_loss(f_s, f_t)
    h = min(f_s.shape[-2:])
    weight = total = 1.0
    for size in HCL_LEVELS:
        if size >= h:
            continue
        weight /= 2.0
        loss = loss + weight * F.mse_loss(F.adaptive_avg_pool2d(f_s, size), F.adaptive_avg_pool2d(f_t, size))
        total += weight
    return loss / total


def hcl_loss(student_maps: list[torch.Tensor], teacher_maps: list[torch.Tensor]) -> torch.Tensor:
    """Sum of ``hcl_level`` over paired levels (same shapes)."""
    if len(student_maps) != len(teacher_maps):
        raise ValueError(f"{len(student_maps)} student levels vs {len(teacher_maps)} teacher levels")
    return sum(hcl_level(s, t) for s, t in zip(student_maps, teacher_maps))


class ABF(nn.Module):
    """Attention-based fusion: reduce to mid channels, fuse with the deeper residual, project to C_t."""

    def __init__(self, in_channels: int, mid_channels: int, out_channels: int, fuse: bool):
        super().__init__()
        self.reduce = nn.Sequential(nn.Conv2d(in_channels, mid_channels, 1, bias=False), nn.BatchNorm2d(mid_channels))
        self.project = nn.Sequential(nn.Conv2d(mid_channels, out_channels, 3, padding=1, bias=False),
                                     nn.BatchNorm2d(out_channels))
        self.attention = (nn.Sequential(nn.Conv2d(2 * mid_channels, 2, 1), nn.Sigmoid()) if fuse else None)
        nn.init.kaiming_uniform_(self.reduce[0].weight, a=1)
        nn.init.kaiming_uniform_(self.project[0].weight, a=1)

    def forward(self, x: torch.Tensor, residual: torch.Tensor | None, out_size: tuple[int, int]):
        # Channels-last: the fusion's convolutions then run without layout reorders in their backward
        # (measured, resnet56 -> resnet20: 3.2x -> 2.6x a CE step; outputs are the same values).
        x = self.reduce(x.contiguous(memory_format=torch.channels_last))
        if self.attention is not None:
            residual = F.interpolate(residual, size=x.shape[-2:], mode="nearest")
            # The 1x1 attention conv over cat([x, residual]) as the sum of its two halves: the same
            # values without materialising the concatenation (nor slicing its gradient back apart).
            conv, mid = self.attention[0], x.shape[1]
            a = self.attention[1](F.conv2d(x, conv.weight[:, :mid]) +
                                  F.conv2d(residual, conv.weight[:, mid:], conv.bias))
            x = x * a[:, 0:1] + residual * a[:, 1:2]
        if tuple(x.shape[-2:]) != tuple(out_size):
            x = F.interpolate(x, size=out_size, mode="nearest")
        return self.project(x), x


def _as_map(pooled: torch.Tensor) -> torch.Tensor:
    return pooled[:, :, None, None]


class ReviewKDParams(MethodParams):
    ce_weight: float = Field(1.0, ge=0)
    reviewkd_weight: float = Field(5.0, ge=0)  # CIFAR yaml value (mdistiller's cfg default is 1.0)
    warmup: int = Field(20, ge=0)  # epochs of linear loss warm-up (0 = none)
    max_mid_channels: int = Field(512, ge=1)
    student_preact: bool = False  # fuse the student's pre-activation maps instead of the post-activation ones


@register
class ReviewKD(Method):
    name = "reviewkd"
    Params = ReviewKDParams

    def __init__(self, params: ReviewKDParams, ctx):
        super().__init__(params, ctx)
        s_shapes = feature_shapes(ctx.student, ctx.input_size)
        t_shapes = feature_shapes(ctx.teacher, ctx.input_size)
        s_key = "preact" if params.student_preact else "stages"
        self.n_stages = min(len(s_shapes[s_key]), len(t_shapes["preact"]))
        s_levels = list(s_shapes[s_key][-self.n_stages:]) + [(s_shapes["pooled"][0], 1, 1)]
        t_levels = list(t_shapes["preact"][-self.n_stages:]) + [(t_shapes["pooled"][0], 1, 1)]
        mid = min(params.max_mid_channels, s_levels[-1][0])
        self.out_sizes = [tuple(t[1:]) for t in t_levels]  # shallow -> deep
        # abfs[i] serves level i (shallow -> deep); the deepest (the pooled level) does not fuse
        self.abfs = nn.ModuleList(ABF(s[0], mid, t[0], fuse=i < len(s_levels) - 1)
                                  for i, (s, t) in enumerate(zip(s_levels, t_levels)))

    def student_levels(self, feats) -> list[torch.Tensor]:
        maps = feats.preact if self.params.student_preact else feats.stages
        return list(maps[-self.n_stages:]) + [_as_map(feats.pooled)]

    def teacher_levels(self, feats) -> list[torch.Tensor]:
        return [f.detach() for f in feats.preact[-self.n_stages:]] + [_as_map(feats.pooled.detach())]

    def review(self, levels: list[torch.Tensor], out_sizes=None) -> list[torch.Tensor]:
        """Run the ABFs deepest-first; return their outputs shallow -> deep, at ``out_sizes`` (default: the
        teacher's sizes at ``ctx.input_size``; ``losses`` passes the actual teacher sizes)."""
        out_sizes = out_sizes or self.out_sizes
        outs, residual = [], None
        for i in reversed(range(len(levels))):
            out, residual = self.abfs[i](levels[i], residual, tuple(out_sizes[i]))
            outs.append(out)
        return outs[::-1]

    def losses(self, student, teacher, targets, index, epoch):
        p = self.params
        targets_t = self.teacher_levels(teacher[1])
        fused = self.review(self.student_levels(student[1]), [t.shape[-2:] for t in targets_t])
        hcl = hcl_loss(fused, targets_t)
        return {
            "ce": cross_entropy_term(student[0], targets, p.ce_weight),
            "reviewkd": p.reviewkd_weight * warmup_factor(epoch, p.warmup) * hcl,
        }
