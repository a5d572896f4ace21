"""``kdsvd``: Lee, Kim & Song, "Self-supervised Knowledge Distillation Using Singular Value
Decomposition", ECCV 2018.

Knowledge is how the dominant directions of consecutive feature maps relate. For every stage l, the map
is read as a [B, H*W, C] matrix X_l (one row per position, one column per channel) and decomposed,
X_l = U S V^T. Let v_{l,1..n} be its top right singular vectors (C-dimensional, each L2-normalised) and
s_l its top singular values divided by their L2 norm.

* Teacher: the top K vectors and values; student: the top K+3 vectors.
* Alignment (per stage, per sample): student vector a matches teacher vector k if |cos(a, k)| is the
  largest over the student's K+3 vectors; the match is flipped to the teacher's sign. So each teacher
  vector gets one student vector (a max-|cosine| sign/permutation mask).
* Both aligned sets are scaled by the teacher's normalised singular values: w_{l,k} = s^t_{l,k} v_{l,k}.
* Between consecutive stages l-1 and l, an element-wise RBF map over channel pairs (c, c'):
      R_l[c, c', k] = exp( -(w_{l,k}[c] - w_{l-1,k}[c'])^2 / 8 )
  and the loss is the squared L2 distance between student and teacher maps, non-finite entries zeroed:
      L_kdsvd = (1/B) * sum_{l>=2} sum_{b,c,c',k} (R^s_l - R^t_l)^2

    L = w_ce * CE(z_s, y) + w_kdsvd * L_kdsvd

Features: the post-activation ``stages`` (mdistiller "feats[1:]"; RepDistiller ``feat[1:-1]``), paired
from the deep end when the stage counts differ (``common.pair_from_end``). The alignment compares student
and teacher singular vectors, which live in channel space, so every paired stage must have the same
channel count in student and teacher; otherwise the method is undefined: MethodNotApplicable. Spatial
sizes may differ (the vectors do not depend on H*W). Applicable zoo pairs are therefore same-width pairs:
CIFAR ResNets among themselves (resnet8..110), resnet8x4/32x4, wrn_16_1/40_1, wrn_16_2/40_2, the VGGs,
ResNet18/34, and any architecture with itself. No learnable parts.

Defaults (mdistiller): K = 1, student_extra = 3 (K+3 student vectors), kdsvd_weight = 1.0,
ce_weight = 1.0. RBF width 8 is fixed as in the references.

Numerical safety and deviations from the references (mdistiller/RepDistiller), and why:
* The right singular vectors are computed by a custom autograd function (``top_right_singular``) whose
  backward only involves the returned top-n vectors: the coupling of vector i to vector j is divided by
  sigma_i^2 - sigma_j^2 and set to 0 when that gap is below a relative tolerance (a degenerate pair has
  no defined derivative), and the null-space part is divided by sigma_i^2 and set to 0 when sigma_i ~ 0.
  PyTorch's generic SVD backward divides by the gaps of *all* pairs, so the repeated zero singular values
  of ReLU maps with dead channels turn the whole gradient into NaN (0/0) even though those vectors are
  not used; here the gradient stays finite and non-zero. Non-finite inputs, outputs and gradients are
  set to 0 (the references' "removenan" on u, s, v), as are non-finite loss entries (as mdistiller does).
* The map is reshaped to [B, H*W, C] with a permute, as the paper (NHWC) defines it; a plain
  ``view`` of an NCHW tensor would give [B, C*H, W] and decompose over width instead of channels.
* Each singular vector's sign is fixed so that its entries sum to >= 0 (for a post-ReLU map the top vector
  is then entrywise non-negative). The references leave the sign to the LAPACK backend, and since the
  RBF between stages depends on the relative sign of the teacher's vectors, the loss value could differ
  between CPU and GPU.
* Computed in float32 (or float64 if given) with autocast off; the singular pairs come from an eigh of the
  smaller Gram matrix (X^T X or X X^T, in the map's precision, LAPACK on one thread), much cheaper than an
  SVD of the H*W x C map; same pairs. (An eigh in float64 instead changes the loss and the student's
  gradient by < 1e-6 relative on resnet32x4 -> resnet8x4 maps, and costs a third more.)
"""
from __future__ import annotations

from contextlib import contextmanager, nullcontext

import torch
import torch.nn.functional as F
from pydantic import Field

from models.base import feature_shapes

from .base import Method, MethodNotApplicable, MethodParams, cross_entropy_term
from .common import full_precision, pair_from_end
from .registry import register

RBF_WIDTH = 8.0


def _finite(x: torch.Tensor) -> torch.Tensor:
    return torch.nan_to_num(x, nan=0.0, posinf=0.0, neginf=0.0)


@contextmanager
def _one_cpu_thread():
    """LAPACK on one thread. A batch of small eigen-problems gains nothing from MKL's threads and loses a
    lot: on this 2-core CPU, 64 eigh of 128 x 128 take 2.4x as long on 2 threads as on 1."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def _svd(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Singular values [B, r] and right singular vectors [B, C, r] of x [B, M, C] (r = min(M, C)).

    From the eigen-decomposition of the smaller Gram matrix -- X^T X (C x C) when C <= M,
    else X X^T (M x M), whose eigenvectors U give V = X^T U / S -- instead of an SVD of X: the same
    values and vectors (sign fixed below) at a fraction of the cost (an 8 x 8 map of 256 channels
    needs a 64 x 64 problem, not 256 x 256). A zero singular value gets a zero vector, which the
    backward below treats as degenerate. Zeros if LAPACK fails."""
    m, c = x.shape[-2:]
    r = min(m, c)
    xt = x.transpose(-2, -1)
    try:
        gram = (xt @ x) if c <= m else (x @ xt)
        with _one_cpu_thread() if gram.device.type == "cpu" else nullcontext():
            lam, vecs = torch.linalg.eigh(gram)  # ascending
    except RuntimeError:  # torch.linalg.LinAlgError: no convergence
        return x.new_zeros(x.shape[0], r), x.new_zeros(x.shape[0], c, r)
    s = lam.flip(-1)[..., :r].clamp_min(0).sqrt()  # descending
    if c > m:
        alive = s > s[..., :1] * 1e-6
        v = (xt @ vecs.flip(-1)) / torch.where(alive, s, torch.ones_like(s))[..., None, :]
        v = v * alive[..., None, :]
    else:
        v = vecs.flip(-1)[..., :r]
    sign = torch.where(v.sum(dim=-2, keepdim=True) < 0, -1.0, 1.0).to(v.dtype)  # entries sum >= 0
    return _finite(s), _finite(v * sign)


GRAM_SQUARINGS = 6  # the teacher's top pair: power iteration on G^(2^6), see _top_pair


def _top_pair(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The top singular value [B, 1] and right vector [B, C, 1] of x [B, M, C], without gradient.

    The teacher needs only this pair (K = 1), so instead of a full eigen-decomposition: the smaller Gram
    matrix G is squared ``GRAM_SQUARINGS`` times (each rescaled by its largest entry) and a few power
    steps on G^64 from the all-ones vector (post-ReLU maps: the top vector is non-negative) converge
    like 64 x as many plain ones; the value is the Rayleigh quotient on G. Matches the eigh to float
    precision unless the top two singular values nearly coincide, where the top vector is not defined
    anyway (tests/test_method_kdsvd.py)."""
    m, c = x.shape[-2:]
    xt = x.transpose(-2, -1)
    g = (xt @ x) if c <= m else (x @ xt)
    p = g / g.abs().amax(dim=(1, 2), keepdim=True).clamp_min(torch.finfo(g.dtype).tiny)
    for _ in range(GRAM_SQUARINGS):
        p = p @ p
        p = p / p.abs().amax(dim=(1, 2), keepdim=True).clamp_min(torch.finfo(g.dtype).tiny)
    q = F.normalize(p.sum(dim=2, keepdim=True), dim=1)  # one power step on the all-ones vector
    for _ in range(4):
        q = F.normalize(p @ q, dim=1)
    s = (q.transpose(1, 2) @ g @ q).squeeze(-1).clamp_min(0).sqrt()  # [B, 1]
    v = q if c <= m else F.normalize(xt @ q, dim=1)
    sign = torch.where(v.sum(dim=-2, keepdim=True) < 0, -1.0, 1.0).to(v.dtype)
    return _finite(s), _finite(v * sign)


class _TopRightSingular(torch.autograd.Function):
    """(x [B, M, C], n) -> (V_n [B, C, n], S_n [B, n]) with a truncated, degeneracy-safe backward."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, n: int):
        x = _finite(x)
        s, v = _svd(x)
        r = s.shape[-1]
        v_n, s_n = v[..., : min(n, r)], s[..., : min(n, r)]
        if n > r:  # fewer singular directions than asked: pad with zero vectors and values
            v_n = F.pad(v_n, (0, n - r))
            s_n = F.pad(s_n, (0, n - r))
        ctx.save_for_backward(x, v, s)
        ctx.n = n
        return v_n, s_n

    @staticmethod
    def backward(ctx, g_v: torch.Tensor | None, g_s: torch.Tensor | None):
        x, v, s = ctx.saved_tensors
        r = s.shape[-1]
        m = min(ctx.n, r)
        lam = s.pow(2)  # eigenvalues of X^T X, descending, [B, r]
        lam_n, v_n = lam[:, :m], v[:, :, :m]
        tol = (lam[:, :1] * (10 * torch.finfo(x.dtype).eps)).clamp_min(torch.finfo(x.dtype).tiny)  # [B, 1]
        # W[:, :, i] is the direction in which X^T X must move to move v_i:
        #   sum_{j != i} v_j (v_j . g_i) / (lam_i - lam_j)  +  (I - V V^T) g_i / lam_i
        w = torch.zeros_like(v_n)
        if g_v is not None:
            g = _finite(g_v[:, :, :m])
            a = v.transpose(1, 2) @ g  # [B, r, m]: a[j, i] = v_j . g_i
            gap = lam_n[:, None, :] - lam[:, :, None]  # [B, r, m]: lam_i - lam_j
            ok = gap.abs() > tol[:, :, None]  # excludes j = i and degenerate pairs
            w = v @ torch.where(ok, a / torch.where(ok, gap, torch.ones_like(gap)), torch.zeros_like(a))
            alive = lam_n > tol  # [B, m]
            null = (g - v @ a) / torch.where(alive, lam_n, torch.ones_like(lam_n))[:, None, :]
            w = w + null * alive[:, None, :]
        # dL = <d(X^T X), W V_n^T>  =>  dL/dX = X (W V_n^T + V_n W^T)
        xv = x @ v_n  # [B, M, m]
        grad = (x @ w) @ v_n.transpose(1, 2) + xv @ w.transpose(1, 2)
        if g_s is not None:  # d sigma_i = u_i^T dX v_i with u_i = X v_i / sigma_i
            sig = s[:, :m]
            alive = sig > tol.sqrt()
            coef = torch.where(alive, _finite(g_s[:, :m]) / torch.where(alive, sig, torch.ones_like(sig)),
                               torch.zeros_like(sig))
            grad = grad + (xv * coef[:, None, :]) @ v_n.transpose(1, 2)
        return _finite(grad), None


def top_right_singular(x: torch.Tensor, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-n right singular vectors [B, C, n] (columns, sign: entries sum >= 0) and values [B, n] of
    x [B, M, C], zero-padded beyond rank min(M, C); differentiable with a finite gradient."""
    return _TopRightSingular.apply(x, n)


def _positions_by_channels(f: torch.Tensor) -> torch.Tensor:
    """[B, C, H, W] -> [B, H*W, C]."""
    return f.flatten(2).transpose(1, 2)


def align_to_teacher(v_s: torch.Tensor, v_t: torch.Tensor) -> torch.Tensor:
    """For each teacher vector, the student vector of largest |cosine|, with the teacher's sign.

    v_s [B, C, n_s], v_t [B, C, n_t] -> [B, C, n_t]. (On an exact tie the tied vectors are summed.)
    """
    cos = v_s.transpose(1, 2) @ v_t  # [B, n_s, n_t]
    best = cos.abs().amax(dim=1, keepdim=True)
    mask = torch.where(cos.abs() == best, torch.sign(cos), torch.zeros_like(cos)).detach()
    return v_s @ mask


def _stage_vectors(f: torch.Tensor, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Normalised top-n right singular vectors [B, C, n] and normalised singular values [B, n]; for a map
    that needs no gradient and n = 1 (the teacher at K = 1), the cheaper ``_top_pair``."""
    x = _positions_by_channels(f)
    if n == 1 and not f.requires_grad:
        s, v = _top_pair(_finite(x))
    else:
        v, s = top_right_singular(x, n)
    return F.normalize(v, p=2, dim=1), F.normalize(s, p=2, dim=1)


def _rbf(w: torch.Tensor, w_prev: torch.Tensor) -> torch.Tensor:
    """[B, C_l, n], [B, C_{l-1}, n] -> [B, C_l, C_{l-1}, n] with exp(-(w[c] - w_prev[c'])^2 / 8)."""
    return torch.exp(-(w[:, :, None, :] - w_prev[:, None, :, :]).pow(2) / RBF_WIDTH)


@full_precision
def kdsvd_loss(feats_s: list[torch.Tensor], feats_t: list[torch.Tensor], k: int = 1,
               student_extra: int = 3) -> torch.Tensor:
    """KDSVD loss over paired stage maps (same channel counts per pair, shallow to deep), divided by B."""
    total = feats_s[0].new_zeros(())
    prev_s = prev_t = None
    for f_s, f_t in zip(feats_s, feats_t):
        with torch.no_grad():
            v_t, s_t = _stage_vectors(f_t.detach(), k)
        v_s, _ = _stage_vectors(f_s, k + student_extra)
        v_s = align_to_teacher(v_s, v_t)
        w_t, w_s = v_t * s_t[:, None, :], v_s * s_t[:, None, :]
        if prev_s is not None:
            diff = (_rbf(w_s, prev_s) - _rbf(w_t, prev_t)).pow(2)
            total = total + torch.where(torch.isfinite(diff), diff, torch.zeros_like(diff)).sum()
        prev_s, prev_t = w_s, w_t
    return total / feats_s[0].shape[0]


class KDSVDParams(MethodParams):
    ce_weight: float = Field(1.0, ge=0)
    kdsvd_weight: float = Field(1.0, ge=0)
    k: int = Field(1, ge=1)
    student_extra: int = Field(3, ge=0)


@register
class KDSVD(Method):
    name = "kdsvd"
    Params = KDSVDParams

    def __init__(self, params: KDSVDParams, ctx):
        super().__init__(params, ctx)
        pairs = pair_from_end(feature_shapes(ctx.student, ctx.input_size)["stages"],
                              feature_shapes(ctx.teacher, ctx.input_size)["stages"])
        if len(pairs) < 2:
            raise MethodNotApplicable("kdsvd relates consecutive stages and needs at least two paired stages")
        mismatched = [(s[0], t[0]) for s, t in pairs if s[0] != t[0]]
        if mismatched:
            raise MethodNotApplicable(
                "kdsvd aligns student and teacher singular vectors in channel space, so paired stages need "
                f"equal channel counts; student/teacher channels {[s[0] for s, _ in pairs]} vs "
                f"{[t[0] for _, t in pairs]} (stages paired from the deep end)")

    def losses(self, student, teacher, targets, index, epoch):
        p = self.params
        pairs = pair_from_end(student[1].stages, teacher[1].stages)
        feats_s = [s for s, _ in pairs]
        feats_t = [t.detach() for _, t in pairs]
        return {
            "ce": cross_entropy_term(student[0], targets, p.ce_weight),
            "kdsvd": p.kdsvd_weight * kdsvd_loss(feats_s, feats_t, p.k, p.student_extra),
        }
