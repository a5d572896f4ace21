"""Class activation maps (CAMs) shared by the CAM methods ``exp_kd`` and ``cat_kd`` (not a method itself).

The CAM of class c on a network's final pre-pooling map F (C x H x W), with its own linear head W (N x C),
is the head applied at every position (Zhou et al., "Learning Deep Features for Discriminative
Localization", CVPR 2016):

    M_c[h, w] = agg_k W[c, k] * F[k, h, w],    agg = sum, or mean = (1/C) sum

F is ``Features.stages[-1]``, the map whose global mean is ``pooled``; so the (un-ReLU'd) sum CAM averaged
over (h, w), plus the head's bias, is exactly the class logit. The bias is not part of the CAM. Every zoo
model but the LTB tree has such a Linear head, named ``classifier``, whose in_features equal the channels
of ``stages[-1]``.
"""
from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F

from .base import MethodContext, MethodNotApplicable


def class_activation_maps(feat: torch.Tensor, weight: torch.Tensor, classes: torch.Tensor | None = None,
                          agg: Literal["mean", "sum"] = "mean", relu: bool = True) -> torch.Tensor:
    """CAMs of a pre-pooling map [B, C, H, W] under a head weight [N, C]: of ``classes`` [B, k] per sample
    ([B, k, H, W]), or of every class in the head's order when ``classes`` is None ([B, N, H, W])."""
    w = weight.to(feat.dtype)
    if classes is None:
        m = torch.einsum("nc,bchw->bnhw", w, feat)
    else:
        m = torch.einsum("bkc,bchw->bkhw", w[classes], feat)
    if agg == "mean":
        m = m / feat.shape[1]
    return F.relu(m) if relu else m


def l2_normalize_maps(m: torch.Tensor) -> torch.Tensor:
    """Each map of a stack [B, k, H, W] divided by its L2 norm over (h, w) (an all-zero map stays zero)."""
    return F.normalize(m.flatten(2), dim=2).view_as(m)


def check_linear_heads(method: str, ctx: MethodContext) -> None:
    """Raise MethodNotApplicable unless the student and the teacher both have a Linear ``classifier`` over
    ``ctx.num_classes`` classes (the head whose weight makes the CAMs)."""
    for role, net in (("student", ctx.student), ("teacher", ctx.teacher)):
        head = getattr(net, "classifier", None)
        if not isinstance(head, torch.nn.Linear) or head.out_features != ctx.num_classes:
            raise MethodNotApplicable(f"{method} needs a Linear head over {ctx.num_classes} classes on the "
                                      f"{role} (CAM = head weight x last map)")
