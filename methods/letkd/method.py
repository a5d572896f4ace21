"""letKD: Gorgun, Gurbuz, Alatan, "Knowledge Distillation Layer that Lets the Student Decide", BMVC 2023
(Sec. 3). The variants ``letkd1`` and ``letkd2`` are registered by methods/letkd1.py and methods/letkd2.py.

Instead of imitating the teacher, the student gets a learnable **KD layer** that stays in it at test time.
On a student map x (B×C×H×W), with x̄ / w̄ the per-location / per-kernel L2-normalised vectors:

    CosConv_s(x)[b,k,h,w] = s · <x̄[b,:,h,w], w̄_k>            (1×1, no bias, learnable scalar s)
    S   = CosConv_{C→K}(x; s_p)                               (template scores, s_p initialised to 3)
    V   = CosConv_{K→C}(ReLU(BN_K(S)); s_v)                   (value path, s_v initialised to 1)
    x̂  = x + α·V                                              (no activation after the sum)
    L_layer = (1/(B·H·W)) Σ_{b,h,w} KL( p_T[b,h,w,:] || softmax_k S[b,:,h,w] )

Kernels are N(0, 2/C_in). Teacher targets (methods/letkd/supervision.py builds their ingredients offline):

* penultimate, K = k k-means centroids ρ of the teacher's last-stage locations:
  p_T = softmax_k(−τ·‖f_t − ρ_k‖²) on raw squared distances (τ = 1; the paper's supplement, Alg. 1);
* intermediate, K = classes × sub-classes: z = LDA(f_t), k* = the nearest sub-class centre among the
  *label's* own sub-classes, p_T = D[k*] (the teacher decision matrix row; supplement, Alg. 2).

    letkd1:  x̂ = KD_penult(stages[-1]),  logits = FC(GAP(x̂)),  L = w_ce·CE + w_p·L_penult
    letkd2:  letkd1 plus a KD layer on stages[inter_stage] whose x̂ feeds the rest of the network,
             L = w_ce·CE + w_p·L_penult + w_i·L_inter

Defaults (the reference implementation's CIFAR-100 configs, all pairs but RN50→MNV2): ce_weight = penult_weight =
inter_weight = 1, alpha_penult = alpha_inter = 1, tau = 1; no logit-KD or feature-regression term. The teacher runs in
eval mode under no_grad (as upstream); it is not needed at test time.

**How the layers sit in the student.** The layers are the method's own modules (counted by
``extra_parameter_count``, optimised with the student, saved in model.pt under "method" because
``part_of_student`` is set), and building the method wires them into ``ctx.student``'s forward, so the
trainer's evaluation — ``student(x)`` — is the full letKD network and accuracy is measured with them:

* both layers sit in the student's stage slots (models/base.py): the family passes the output map of
  ``Features.stages[-1]`` (penultimate) and of ``stages[inter_stage]`` (intermediate) through them where
  it computes them, so everything downstream -- the later stages, ``pooled`` and, by the zoo's contract
  logits = classifier(GAP(stages[-1])), the logits -- sees x̂, with no knowledge of any family. The
  pre-activation map of those stages is left unchanged.

The layers follow the student's train/eval mode at every call (the trainer puts only the student in eval
mode), and a student carries at most one letKD wiring (building another method on it replaces it;
``unwire()`` removes it). The KD-layer scores of each forward ride on the returned Features
(``extras["letkd_scores"]``), which is what ``losses`` reads.

Deviations (and why): (1) the intermediate tap is a *stage output* chosen by ``supervision.inter_stage``
(default −2), not "after the first block of the last stage" — kdlens exposes stage outputs, not blocks;
(2) the cross-architecture "downscale" is ``supervision.penult_size`` / ``inter_size`` (the same average
pooling offline and online), and a student whose map size differs from the supervision grid is refused
with the value to set; (3) seeds are fixed; (4) the diagnostics "Accur_vword" / mean assignment
probability are not logged per epoch (the trainer logs loss terms only); build_supervision logs the
code-usage perplexity. Parameter cost: per layer 2·K·C weights + 2K BN affine + 2 scales (+ 2K+1 BN
buffers), e.g. 0.53 M for C=64, K=4096 — report it next to the accuracy (``params_method_extra``).
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import ClassVar

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from models.base import feature_shapes

from ..base import Method, MethodNotApplicable, MethodParams, cross_entropy_term
from ..common import full_precision, pool_to
from .store import load_supervision


# ------------------------------------------------------------------------------------------ the layer
class CosConv(nn.Module):
    """1×1 convolution by cosine similarity, times a learnable scalar: outputs lie in [−scale, scale]."""

    def __init__(self, c_in: int, c_out: int, scale: float):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(c_out, c_in) * math.sqrt(2.0 / c_in))
        self.scale = nn.Parameter(torch.tensor(float(scale)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = F.normalize(self.weight, dim=1)[:, :, None, None]
        return self.scale * F.conv2d(F.normalize(x, dim=1), w.to(x.dtype))


class KDLayer(nn.Module):
    """x -> (x + α·CosConv_v(ReLU(BN(S))), S) with S = CosConv_p(x): the letKD layer (paper, Sec. 3)."""

    def __init__(self, channels: int, k: int, alpha: float, pred_scale: float = 3.0, value_scale: float = 1.0):
        super().__init__()
        self.predictor = CosConv(channels, k, pred_scale)
        self.bn = nn.BatchNorm2d(k)
        self.value = CosConv(k, channels, value_scale)
        self.alpha = alpha

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        s = self.predictor(x)
        return x + self.alpha * self.value(F.relu(self.bn(s))), s


# ------------------------------------------------------------------------------------- pure functions
@full_precision
def letkd_kl(scores: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """(1/(B·H·W)) Σ KL(p_T || softmax(S)) over locations; scores [B,K,H,W], targets [B·H·W, K] in
    (b, h, w) row order (PyTorch's kl_div(log_softmax, target, "batchmean") on the flattened rows)."""
    k = scores.shape[1]
    log_q = F.log_softmax(scores.permute(0, 2, 3, 1).reshape(-1, k), dim=1)
    return (torch.special.xlogy(targets, targets) - targets * log_q).sum(1).mean()


def locations(fmap: torch.Tensor) -> torch.Tensor:
    """[B, C, H, W] -> [B·H·W, C] rows in (b, h, w) order (as ``.supervision.location_rows``)."""
    return fmap.permute(0, 2, 3, 1).reshape(-1, fmap.shape[1])


@full_precision
@torch.no_grad()
def penult_targets(f_t: torch.Tensor, centroids: torch.Tensor, tau: float) -> torch.Tensor:
    """p_T = softmax_k(−τ·‖f − ρ_k‖²) for every location of the teacher map f_t [B,C,H,W] -> [B·H·W, K]."""
    f = locations(f_t)
    d2 = (f.pow(2).sum(1, keepdim=True) - 2.0 * f @ centroids.T + centroids.pow(2).sum(1)[None]).clamp_min(0)
    return F.softmax(-tau * d2, dim=1)


@full_precision
@torch.no_grad()
def own_subclass(z: torch.Tensor, labels: torch.Tensor, centers: torch.Tensor, subclasses: int) -> torch.Tensor:
    """k* = subclasses·y + argmin_j ‖z − centers[subclasses·y + j]‖²: never a sub-class of another class."""
    cand = centers.view(-1, subclasses, centers.shape[1])[labels]  # [n, subclasses, dim]
    return labels * subclasses + (z[:, None, :] - cand).pow(2).sum(-1).argmin(1)


@full_precision
@torch.no_grad()
def inter_targets(f_t: torch.Tensor, labels: torch.Tensor, scalings: torch.Tensor, xbar: torch.Tensor,
                  centers: torch.Tensor, decision: torch.Tensor, subclasses: int) -> torch.Tensor:
    """p_T = D[k*] per location of f_t [B,C,H,W] with image labels [B] -> [B·H·W, classes·subclasses]."""
    z = (locations(f_t) - xbar) @ scalings
    y = labels.repeat_interleave(f_t.shape[2] * f_t.shape[3])
    return decision[own_subclass(z, y, centers, subclasses)]


# ------------------------------------------------------------------------------- wiring into a student
WIRING = "letkd"  # the student's extension that passes its maps through the KD layers
class _Through:
    """A KD layer as a stage slot of ``student``; notes the layer's scores in the forward's extras. An object
    rather than a closure, so a deep copy of the student is bound to the copies."""

    def __init__(self, student: nn.Module, layer: KDLayer, key: str):
        self.student, self.layer, self.key = student, layer, key

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if self.layer.training != self.student.training:  # the trainer switches only the student to eval
            self.layer.train(self.student.training)
        x_hat, scores = self.layer(x)
        self.student.forward_extras.setdefault("letkd_scores", {})[self.key] = scores
        return x_hat


def wire(student: nn.Module, layers: nn.Module, inter_stage: int | None) -> None:
    """Pass ``student``'s last stage through ``layers.penult`` and, with an ``inter_stage``, that stage's
    output through ``layers.inter`` (stage slots: the later stages, pooled map and logits follow); the
    layers' scores ride on the returned Features as ``extras["letkd_scores"]``. ``unwire`` undoes it."""
    undo = []
    if inter_stage is not None:
        undo.append(student.add_stage_slot(inter_stage, _Through(student, layers.inter, "inter")))
    undo.append(student.add_stage_slot(-1, _Through(student, layers.penult, "penult")))
    student.attach_extension(WIRING, None, undo)  # the layers' weights are the method's (or method_parts)


def unwire(student: nn.Module) -> None:
    """Remove a letKD wiring from ``student`` (no-op if there is none)."""
    student.detach_extension(WIRING)


# ------------------------------------------------------------------------------------------- methods
class LetKDParams(MethodParams):
    ce_weight: float = Field(1.0, ge=0)
    penult_weight: float = Field(1.0, ge=0)
    alpha_penult: float = Field(1.0, ge=0)  # value_ratio of the penultimate layer (0 = prediction head only)
    tau: float = Field(1.0, gt=0)  # inverse temperature of the soft assignment on raw squared distances


class LetKD2Params(LetKDParams):
    inter_weight: float = Field(1.0, ge=0)
    alpha_inter: float = Field(1.0, ge=0)


def _check_grid(who: str, side_key: str, student_hw, grid, teacher_hw) -> None:
    if tuple(student_hw) != tuple(grid):
        hint = (f"set supervision.{side_key}={student_hw[0]}" if student_hw[0] <= teacher_hw[0]
                else "the student's map is larger than the teacher's")
        raise MethodNotApplicable(f"the student's {who} map is {student_hw[0]}x{student_hw[1]} but the supervision "
                                  f"grid is {grid[0]}x{grid[1]} ({hint})")


class LetKD(Method):
    """letKD-1 (``intermediate = False``) and letKD-2 (``True``); see the module docstring."""

    Params = LetKDParams
    needs_supervision = True
    part_of_student = True
    intermediate: ClassVar[bool] = False

    def __init__(self, params: LetKDParams, ctx):
        super().__init__(params, ctx)
        sup, student, teacher = ctx.supervision, ctx.student, ctx.teacher
        card = sup["card"]
        unwire(student)  # one letKD wiring per student; shapes below are the bare network's
        s_shapes, t_shapes = feature_shapes(student, ctx.input_size), feature_shapes(teacher, ctx.input_size)
        if card["num_classes"] != ctx.num_classes:
            raise MethodNotApplicable(f"the supervision was built for {card['num_classes']} classes, "
                                      f"not {ctx.num_classes}")

        c_t, *t_hw = t_shapes["stages"][-1]
        centroids = torch.as_tensor(sup["centroids"], dtype=torch.float32)
        if centroids.shape[1] != c_t:
            raise MethodNotApplicable(f"the supervision centroids have {centroids.shape[1]} dims but the teacher's "
                                      f"last stage has {c_t} channels (built for another teacher)")
        c_s, *s_hw = s_shapes["stages"][-1]
        _check_grid("last-stage", "penult_size", s_hw, card["penult_grid"], t_hw)
        self.penult_side = card["penult_grid"][0] if list(t_hw) != card["penult_grid"] else 0
        self.penult = KDLayer(c_s, centroids.shape[0], params.alpha_penult)
        self.register_buffer("centroids", centroids, persistent=False)  # teacher data: not a student part

        if self.intermediate:
            idx = card["inter_stage"]
            for who, shapes in (("student", s_shapes), ("teacher", t_shapes)):
                n = len(shapes["stages"])
                if not -n <= idx < n or idx % n == n - 1:
                    raise MethodNotApplicable(f"supervision.inter_stage={idx} is not an intermediate stage of "
                                              f"the {who} ({n} stages)")
            ci_t, *ti_hw = t_shapes["stages"][idx]
            if sup["lda_scalings"].shape[0] != ci_t:
                raise MethodNotApplicable(f"the supervision LDA expects {sup['lda_scalings'].shape[0]} channels but "
                                          f"the teacher's stage {idx} has {ci_t} (built for another teacher)")
            ci_s, *si_hw = s_shapes["stages"][idx]
            _check_grid(f"stage-{idx}", "inter_size", si_hw, card["inter_grid"], ti_hw)
            self.inter_idx, self.subclasses = idx, card["subclasses"]
            self.inter_side = card["inter_grid"][0] if list(ti_hw) != card["inter_grid"] else 0
            self.inter = KDLayer(ci_s, sup["decision"].shape[0], params.alpha_inter)
            for name in ("lda_scalings", "lda_xbar", "sub_centers", "decision"):
                self.register_buffer(name, torch.as_tensor(sup[name], dtype=torch.float32), persistent=False)
        wire(student, self, self.inter_idx if self.intermediate else None)

    @classmethod
    def load_supervision(cls, directory: Path) -> dict:
        return load_supervision(directory)

    def test_time_config(self) -> dict:
        """What ``restore_into`` needs to rebuild the KD layers without the supervision (stored in
        model.pt's meta next to their weights)."""
        cfg = {"penult": [self.penult.predictor.weight.shape[1], self.penult.predictor.weight.shape[0],
                          self.penult.alpha], "input_size": self.ctx.input_size}
        if self.intermediate:
            cfg["inter"] = [self.inter.predictor.weight.shape[1], self.inter.predictor.weight.shape[0],
                            self.inter.alpha]
            cfg["inter_stage"] = self.inter_idx
        return cfg

    @classmethod
    def restore_into(cls, student: nn.Module, config: dict) -> nn.Module:
        """Rebuild the KD layers described by ``config`` (``test_time_config``), wire them into a fresh
        ``student`` and return them (the caller loads their weights): the student as it was evaluated."""
        layers = nn.Module()
        layers.penult = KDLayer(*config["penult"])
        if "inter" in config:
            layers.inter = KDLayer(*config["inter"])
        wire(student, layers, config["inter_stage"] if "inter" in config else None)
        return layers


    # -- losses -------------------------------------------------------------------------------------
    def losses(self, student, teacher, targets, index, epoch):
        logits, feats = student
        scores = feats.extras.get("letkd_scores")
        if scores is None:
            raise RuntimeError("letKD: the student output has no KD-layer scores (not the student this method "
                               "was built on, or its wiring was removed)")
        p, t_feats = self.params, teacher[1]
        t_pen = pool_to(t_feats.stages[-1].detach(), self.penult_side) if self.penult_side else t_feats.stages[-1]
        terms = {
            "ce": cross_entropy_term(logits, targets, p.ce_weight),
            "penult": p.penult_weight * letkd_kl(scores["penult"],
                                                 penult_targets(t_pen.detach(), self.centroids, p.tau)),
        }
        if self.intermediate:
            t_int = t_feats.stages[self.inter_idx].detach()
            t_int = pool_to(t_int, self.inter_side) if self.inter_side else t_int
            target = inter_targets(t_int, targets, self.lda_scalings, self.lda_xbar, self.sub_centers,
                                   self.decision, self.subclasses)
            terms["inter"] = p.inter_weight * letkd_kl(scores["inter"], target)
        return terms

    def extra_parameter_count(self) -> int:
        """The KD layers' parameters and BN buffers: what the student carries at test time (not the
        teacher-side centroids / LDA / decision matrix, which only make the training targets)."""
        layers = [self.penult] + ([self.inter] if self.intermediate else [])
        return sum(t.numel() for layer in layers for t in [*layer.parameters(), *layer.buffers()])
