"""Small tensor helpers shared by several methods (not a method itself)."""
from __future__ import annotations

import torch
import torch.nn.functional as F


def pool_to(x: torch.Tensor, size: int) -> torch.Tensor:
    """Adaptive-average-pool a [B,C,H,W] map down to size x size (no-op when already that size)."""
    return x if x.shape[-1] == size and x.shape[-2] == size else F.adaptive_avg_pool2d(x, size)


def align_spatial(s: torch.Tensor, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Pool the larger of two maps to the smaller one's spatial size."""
    h = min(s.shape[-1], t.shape[-1])
    return pool_to(s, h), pool_to(t, h)


def warmup_factor(epoch: int, warmup_epochs: int) -> float:
    """min(epoch / warmup, 1) with epochs counted from 1 (DKD, ReviewKD, Exp-KD loss warm-ups)."""
    return 1.0 if warmup_epochs <= 0 else min(epoch / warmup_epochs, 1.0)


# --- feature-alignment helpers (pair_from_end / conv1x1_bn / conv_regressor) ---
from typing import Sequence, TypeVar  # noqa: E402

from torch import nn  # noqa: E402

from .base import MethodNotApplicable  # noqa: E402

T = TypeVar("T")


def pair_from_end(s_feats: Sequence[T], t_feats: Sequence[T]) -> list[tuple[T, T]]:
    """Pair two shallow->deep feature lists from the deep end: the last k = min(len) entries of each.

    Families have 3, 4 or 5 ``stages`` (WRN, MobileNetV2 and ShuffleNetV2 add a final tap), so deepest is
    matched with deepest and the surplus shallow stages of the longer list are dropped. Equal lengths
    give a plain zip.
    """
    k = min(len(s_feats), len(t_feats))
    return list(zip(s_feats[len(s_feats) - k:], t_feats[len(t_feats) - k:]))


def conv1x1_bn(c_in: int, c_out: int) -> nn.Sequential:
    """Channel connector: 1x1 conv (no bias, He-normal over fan-out) followed by BatchNorm (1, 0)."""
    conv = nn.Conv2d(c_in, c_out, kernel_size=1, bias=False)
    nn.init.kaiming_normal_(conv.weight, mode="fan_out", nonlinearity="relu")
    return nn.Sequential(conv, nn.BatchNorm2d(c_out))


def conv_regressor(s_shape: Sequence[int], t_shape: Sequence[int], relu: bool = True) -> nn.Sequential:
    """FitNet's ConvReg: map a student (C_s,H_s,W_s) map to the teacher's (C_t,H_t,W_t), then BN (+ReLU).

    * H_s == 2*H_t: 3x3 conv, stride 2, padding 1;
    * 2*H_s == H_t: 4x4 transposed conv, stride 2, padding 1;
    * H_s >= H_t:   valid conv with kernel (1+H_s-H_t, 1+W_s-W_t) (a 1x1 conv when the sizes match);
    * otherwise undefined: raises MethodNotApplicable.
    Conv layers keep PyTorch's default init and bias, as in the reference. AB uses it without the ReLU.
    """
    (cs, hs, ws), (ct, ht, wt) = tuple(s_shape), tuple(t_shape)
    if hs == 2 * ht and ws == 2 * wt:
        conv: nn.Module = nn.Conv2d(cs, ct, kernel_size=3, stride=2, padding=1)
    elif 2 * hs == ht and 2 * ws == wt:
        conv = nn.ConvTranspose2d(cs, ct, kernel_size=4, stride=2, padding=1)
    elif hs >= ht and ws >= wt:
        conv = nn.Conv2d(cs, ct, kernel_size=(1 + hs - ht, 1 + ws - wt))
    else:
        raise MethodNotApplicable(f"no ConvReg maps a {hs}x{ws} student map onto a {ht}x{wt} teacher map "
                                  "(needs H_s >= H_t or H_s == H_t/2)")
    layers = [conv, nn.BatchNorm2d(ct)] + ([nn.ReLU(inplace=False)] if relu else [])
    return nn.Sequential(*layers)


def check_stage_index(index: int, n_student: int, n_teacher: int, what: str) -> None:
    """Raise MethodNotApplicable unless ``index`` (Python-style, negative from the end) exists in both nets."""
    for n, who in ((n_student, "student"), (n_teacher, "teacher")):
        if not -n <= index < n:
            raise MethodNotApplicable(f"{what}={index} does not exist in the {who} ({n} stages)")


# --- numeric-precision helper (full_precision) ---
import functools  # noqa: E402


def _upcast(x):
    if isinstance(x, torch.Tensor):
        return x.float() if x.dtype in (torch.float16, torch.bfloat16) else x
    if isinstance(x, (list, tuple)):
        return type(x)(_upcast(v) for v in x)
    return x


def _first_device_type(xs) -> str | None:
    for x in xs:
        if isinstance(x, torch.Tensor):
            return x.device.type
        if isinstance(x, (list, tuple)):
            found = _first_device_type(x)
            if found:
                return found
    return None


def full_precision(fn):
    """Decorator for a pure loss: autocast off, float16/bfloat16 tensor arguments (also inside lists) upcast
    to float32; float32/float64 pass unchanged. For losses whose math breaks in half precision under the
    trainer's AMP: exp(x/0.07) overflows float16 (CRD), SVD has no half kernel (KDSVD), batch Gram/distance
    matrices and log(p + 1e-7) lose the precision they need (SP, RKD, PKT)."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        device_type = _first_device_type(list(args) + list(kwargs.values())) or "cpu"
        with torch.autocast(device_type=device_type, enabled=False):
            return fn(*_upcast(args), **{k: _upcast(v) for k, v in kwargs.items()})

    return wrapper


def distinct_preact_stages(model: nn.Module, n: int) -> list[int]:
    """Indices of the stages whose pre-activation is not a repeat of the previous stage's.

    A final tap may re-expose the previous stage's pre-activation (WRN: ``preact[-1]`` and ``preact[-2]`` are
    both the output of the final BN, so ``bn_before_relu()`` lists that BN twice); distilling it twice would
    only re-weight that stage, so the repeat is dropped. Models without ``bn_before_relu()`` keep every stage.
    """
    try:
        bns = model.bn_before_relu()
    except NotImplementedError:
        return list(range(n))
    if len(bns) != n:
        return list(range(n))
    return [i for i in range(n) if i == 0 or bns[i] is not bns[i - 1]]


def body_parameters(model: nn.Module) -> list[nn.Parameter]:
    """Every parameter of ``model`` but its head ``classifier``'s (RepDistiller's ``get_feat_modules()``:
    what AB's and FSP's initialisation phases train)."""
    head = {id(q) for q in model.classifier.parameters()}
    return [q for q in model.parameters() if id(q) not in head]
