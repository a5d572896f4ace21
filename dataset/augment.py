"""The strong training view: RandAugment-style operations and a Cutout on uint8 images, in batch.

A method that learns from a second, strongly augmented view of every training image (``mlkd``: Jin, Wang &
Lin, "Multi-Level Logit Distillation", CVPR 2023) declares it (``Method.extra_views``); the training
loaders (dataset/loader.py) then yield that view of each batch next to the standard one, and the teacher
cache can hold the teacher's logits for it. The view of sample i in epoch e is, like the standard one, a
pure function of (seed, e, i): an independent standard crop and flip of the image (its own draws), then
the operations below, every random choice drawn per sample from generators seeded by (seed, epoch) or
(seed, epoch, index), never from the batch the sample lands in.

The operations are RandAugment's (Cubuk, Zoph, Shlens & Le, CVPR Workshops 2020) in the form FixMatch uses
for its strong view (Sohn et al., "FixMatch", NeurIPS 2020, Sec. 2.3 and its appendix's list of
operations), the form MLKD's authors train with: ``OPS_PER_IMAGE`` = 2 operations drawn with replacement
from the 14 of ``OPS``, each at a magnitude drawn uniformly from its range (no global magnitude M), then a
Cutout (DeVries & Taylor, arXiv:1708.04552, 2017) square of side up to ``CUTOUT_MAX`` of the image, filled
with ``CUTOUT_FILL``. Each operation gives what Pillow's gives (ImageOps / ImageEnhance / an affine
``transform`` with nearest sampling and black fill; tests/test_data_augment.py compares them pixel for
pixel), written here as batched tensor code on the training device: no torchvision import (~2 s per stage
process) and no per-image Python loop.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Literal, get_args

import torch
import torch.nn.functional as F

ExtraView = Literal["strong"]
STRONG: ExtraView = "strong"
EXTRA_VIEWS: tuple[str, ...] = get_args(ExtraView)  # the views a loader can make besides the standard one
# SeedSequence streams of the strong views: the in-memory plan's [seed, epoch, STRONG_STREAM] (0 is the
# epoch's order and crops, 1 the trainer's steps), a streamed view's crop [seed, epoch, STRONG_STREAM, index]
# and its operations [seed, epoch, STRONG_OPS_STREAM, index] (2 is the standard streamed view).
STRONG_STREAM = 3
STRONG_OPS_STREAM = 4
OPS_PER_IMAGE = 2
CUTOUT_MAX = 0.5  # the largest Cutout side, as a fraction of the image's width
CUTOUT_FILL = (125, 123, 114)


def check_views(extra: tuple[str, ...]) -> None:
    unknown = [v for v in extra if v not in EXTRA_VIEWS]
    if unknown:
        raise ValueError(f"no view {unknown[0]!r}: a loader makes the standard view and {list(EXTRA_VIEWS)}")


# ------------------------------------------------------------------------------------- the operations
# Each takes uint8 images [n, 3, H, W] and one float magnitude per image [n] (on their device).

def _blend(images: torch.Tensor, degenerate: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """ImageEnhance's degenerate + factor * (image - degenerate), truncated to uint8 as Pillow's blend."""
    out = degenerate + factor.view(-1, 1, 1, 1) * (images.float() - degenerate)
    return out.clamp_(0, 255).to(torch.uint8)


def _grey(images: torch.Tensor) -> torch.Tensor:
    """Pillow's RGB -> L conversion (ITU-R 601-2 luma in its 16-bit fixed point), [n, 1, H, W] int64."""
    r, g, b = images.long().unbind(1)
    return ((r * 19595 + g * 38470 + b * 7471 + 0x8000) >> 16)[:, None]


def _identity(images, _):
    return images


def _autocontrast(images, _):
    """Each channel's range stretched to 0..255 (ImageOps.autocontrast without cutoff)."""
    lo = images.amin(dim=(2, 3), keepdim=True).float()
    hi = images.amax(dim=(2, 3), keepdim=True).float()
    # (x - lo) * 255 / (hi - lo) in that order: exact at x = hi, where 255 / (hi - lo) * (x - lo) may round down
    stretched = ((images.float() - lo) * 255 / (hi - lo).clamp(min=1)).floor_().clamp_(0, 255).to(torch.uint8)
    return torch.where(hi > lo, stretched, images)


def _equalize(images, _):
    """Per-channel histogram equalisation with Pillow's lookup table: lut[i] = (step // 2 + #pixels below i)
    // step, step = (#pixels - #pixels in the last occupied bin) // 255; identity where step is 0."""
    n, c, h, w = images.shape
    flat = images.reshape(n * c, h * w).long()
    hist = torch.zeros(n * c, 256, dtype=torch.long, device=images.device).scatter_add_(1, flat, torch.ones_like(flat))
    last_bin = 255 - (hist > 0).flip(1).long().argmax(1, keepdim=True)
    step = (h * w - hist.gather(1, last_bin)) // 255
    below = hist.cumsum(1) - hist
    lut = ((step // 2 + below) // step.clamp(min=1)).clamp_(max=255)
    lut = torch.where(step > 0, lut, torch.arange(256, device=images.device))
    return lut.gather(1, flat).view(n, c, h, w).to(torch.uint8)


def _posterize(images, bits):
    """Keep the top ``int(bits)`` bits of every channel value."""
    step = 2 ** (8 - bits.floor().clamp(1, 8).long())
    return (images.long() // step.view(-1, 1, 1, 1) * step.view(-1, 1, 1, 1)).to(torch.uint8)


def _solarize(images, threshold):
    """Invert every value at or above ``threshold``."""
    return torch.where(images.float() >= threshold.view(-1, 1, 1, 1), 255 - images, images)


def _brightness(images, factor):
    return _blend(images, torch.zeros((), device=images.device), factor)


def _color(images, factor):
    return _blend(images, _grey(images).float(), factor)


def _contrast(images, factor):
    """Blend with the grey level of the image's mean luma, rounded as ImageEnhance.Contrast does."""
    mean = (_grey(images).float().mean(dim=(1, 2, 3), keepdim=True) + 0.5).floor()
    return _blend(images, mean, factor)


SMOOTH = torch.tensor([[1.0, 1.0, 1.0], [1.0, 5.0, 1.0], [1.0, 1.0, 1.0]]) / 13  # ImageFilter.SMOOTH


def _sharpness(images, factor):
    """Blend with the SMOOTH-filtered image; the border rows and columns are kept, as Pillow's 3x3 filter
    leaves them."""
    kernel = SMOOTH.to(images.device).expand(3, 1, 3, 3)
    smooth = F.conv2d(images.float(), kernel, groups=3).round_()
    degenerate = images.float()
    degenerate[:, :, 1:-1, 1:-1] = smooth
    return _blend(images, degenerate, factor)


def _affine(images: torch.Tensor, a, b, c, d, e, f) -> torch.Tensor:
    """Pillow's affine ``transform`` with nearest sampling: output pixel (u, v) reads the input at
    floor((a x + b y + c, d x + e y + f)) for its centre (x, y) = (u + 1/2, v + 1/2); outside the image,
    black. a..f: one coefficient per image [n]. Elementwise, so an image's result never depends on the
    others in its batch (a batched matmul could round differently with the batch's size)."""
    n, ch, h, w = images.shape
    dev = images.device
    y, x = torch.meshgrid(torch.arange(h, device=dev) + 0.5, torch.arange(w, device=dev) + 0.5, indexing="ij")

    def at(p, q, r):
        return (p.view(n, 1, 1) * x + q.view(n, 1, 1) * y + r.view(n, 1, 1)).floor_().long()

    sx, sy = at(a, b, c), at(d, e, f)
    inside = (sx >= 0) & (sx < w) & (sy >= 0) & (sy < h)
    flat = (sy.clamp(0, h - 1) * w + sx.clamp(0, w - 1)).view(n, 1, h * w).expand(n, ch, h * w)
    out = images.reshape(n, ch, h * w).gather(2, flat).view(n, ch, h, w)
    return torch.where(inside[:, None], out, torch.zeros((), dtype=images.dtype, device=dev))


def _rotate(images, degrees):
    """Image.rotate(degrees) about the image centre (counter-clockwise, nearest, black corners)."""
    h, w = images.shape[2:]
    cx, cy = w / 2, h / 2
    t = torch.deg2rad(degrees)
    cos, sin = torch.cos(t), torch.sin(t)
    return _affine(images, cos, -sin, cx - cos * cx + sin * cy, sin, cos, cy - sin * cx - cos * cy)


def _shear_x(images, v):
    one, zero = torch.ones_like(v), torch.zeros_like(v)
    return _affine(images, one, v, zero, zero, one, zero)


def _shear_y(images, v):
    one, zero = torch.ones_like(v), torch.zeros_like(v)
    return _affine(images, one, zero, zero, v, one, zero)


def _translate_x(images, v):
    """Shift by ``v`` times the width."""
    one, zero = torch.ones_like(v), torch.zeros_like(v)
    return _affine(images, one, zero, v * images.shape[3], zero, one, zero)


def _translate_y(images, v):
    one, zero = torch.ones_like(v), torch.zeros_like(v)
    return _affine(images, one, zero, zero, zero, one, v * images.shape[2])


@dataclass(frozen=True)
class Op:
    name: str
    apply: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
    low: float  # the magnitude range (FixMatch's list of RandAugment operations)
    high: float


OPS = (
    Op("autocontrast", _autocontrast, 0, 1),
    Op("brightness", _brightness, 0.05, 0.95),
    Op("color", _color, 0.05, 0.95),
    Op("contrast", _contrast, 0.05, 0.95),
    Op("equalize", _equalize, 0, 1),
    Op("identity", _identity, 0, 1),
    Op("posterize", _posterize, 4, 8),
    Op("rotate", _rotate, -30, 30),
    Op("sharpness", _sharpness, 0.05, 0.95),
    Op("shear_x", _shear_x, -0.3, 0.3),
    Op("shear_y", _shear_y, -0.3, 0.3),
    Op("solarize", _solarize, 0, 256),
    Op("translate_x", _translate_x, -0.3, 0.3),
    Op("translate_y", _translate_y, -0.3, 0.3),
)


def _cutout(images: torch.Tensor, draws: torch.Tensor) -> torch.Tensor:
    """A square of side s = u0 * CUTOUT_MAX * W whose corner is (max(0, centre - s/2)) per axis, the centre
    at (u1 * W, u2 * H); filled over rows and columns corner .. int(min(size, corner + s)), both ends
    included, as Pillow draws a rectangle. ``draws`` [n, 3] uniform in [0, 1)."""
    n, _, h, w = images.shape
    side = draws[:, 0] * CUTOUT_MAX * w
    x0 = (draws[:, 1] * w - side / 2).clamp(min=0).floor()
    y0 = (draws[:, 2] * h - side / 2).clamp(min=0).floor()
    x1 = (x0 + side).clamp(max=w).floor()
    y1 = (y0 + side).clamp(max=h).floor()
    cols = torch.arange(w, device=images.device)
    rows = torch.arange(h, device=images.device)
    in_cols = (cols >= x0[:, None]) & (cols <= x1[:, None])  # [n, W]
    in_rows = (rows >= y0[:, None]) & (rows <= y1[:, None])  # [n, H]
    box = (in_rows[:, :, None] & in_cols[:, None, :])[:, None]  # [n, 1, H, W]
    fill = torch.tensor(CUTOUT_FILL, dtype=images.dtype, device=images.device).view(1, 3, 1, 1)
    return torch.where(box, fill, images)


# ----------------------------------------------------------------------------------- draws and views
@dataclass
class StrongDraws:
    """Every random choice of the strong operations, one row per sample (on the CPU)."""

    ops: torch.Tensor  # [n, OPS_PER_IMAGE] indices into OPS
    levels: torch.Tensor  # [n, OPS_PER_IMAGE] uniform [0, 1): where in its range each op's magnitude lies
    cutout: torch.Tensor  # [n, 3] uniform [0, 1): Cutout side (x CUTOUT_MAX) and centre (x W, x H)

    def __getitem__(self, rows) -> "StrongDraws":
        return StrongDraws(self.ops[rows], self.levels[rows], self.cutout[rows])


def strong_draws(n: int, generator: torch.Generator) -> StrongDraws:
    """``n`` samples' draws, in a fixed order from ``generator``."""
    ops = torch.randint(0, len(OPS), (n, OPS_PER_IMAGE), generator=generator)
    return StrongDraws(ops, torch.rand(n, OPS_PER_IMAGE, generator=generator), torch.rand(n, 3, generator=generator))


def strong_ops(images: torch.Tensor, draws: StrongDraws) -> torch.Tensor:
    """uint8 [n, 3, H, W]: each image through its ``OPS_PER_IMAGE`` operations in order, then its Cutout.
    Each image's result depends on its own pixels and draws alone (ops run on the images that drew them)."""
    dev = images.device
    ops, levels = draws.ops.to(dev), draws.levels.to(dev)
    out = images.clone()
    for slot in range(OPS_PER_IMAGE):
        for k, op in enumerate(OPS):
            rows = (ops[:, slot] == k).nonzero().flatten()
            if len(rows):
                magnitude = op.low + (op.high - op.low) * levels[rows, slot]
                out[rows] = op.apply(out[rows], magnitude)
    return _cutout(out, draws.cutout.to(dev))

