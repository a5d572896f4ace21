"""Information discarding: per-cell input-noise maps sigma (Cheng et al., "Explaining Knowledge Distillation by
Quantifying the Knowledge", CVPR 2020), on a grid sized for small images.

For an input image x and a feature map f (ReLU'd), sigma is a G x G grid of noise scales, one per image
cell, shared by the 3 colour channels and upsampled to the image with nearest interpolation. With
eps ~ N(0, I) drawn per (sample, channel, pixel), the perturbed input is ``x' = x + up(sigma) * eps`` (in
the *normalised* input space, as the training pipeline feeds the network). sigma minimises::

    L(sigma) = mean((relu f(x') - relu f(x))^2) / sigma_f  -  lambda_H * mean_i H_i,
    H_i = ln sigma_i + 1/2 ln(2 pi e)                      (Gaussian entropy of cell i, nats)

with plain SGD on the raw sigma (no reparameterisation), clamped into ``clamp`` before every step,
started at ``sigma0`` everywhere. ``sigma_f`` is the element-mean squared feature change under uniform
noise ``sigma0`` (B samples), computed once per image; ``sigma_f == 0`` marks the image non-effective
(a dead feature: nothing to explain). At step ``probe_step - 1`` an image whose recorded mean entropy
never exceeded the target stops growing slowly: its lambda_H is multiplied by ``lambda_boost``;
an image that did exceed it stops there. Every step records (before its update) a *copy* of the clamped
sigma, the mean entropy and the feature term; the returned map is the recorded one whose mean entropy
is closest to the target ``H* = ln(sigma0 * budget_ratio) + 1/2 ln(2 pi e)`` (-2.8 for sigma0 = 0.01,
the reference's literal value), so every map -- across images, checkpoints and networks -- is compared
at the same entropy budget and only the spatial *distribution* of entropy differs.

Two implementations with identical noise:

* :func:`estimate_sigma` -- batched: N images at once, an independent ``[N, 1, G, G]`` parameter, each
  image repeated B times, one forward/backward per step over all active images' samples (optionally in
  chunks of whole images, ``max_samples``, to bound memory on CPU), losses summed (independent: each
  image's gradient only reaches its own sigma, normalised by its own sigma_f).
* :func:`estimate_sigma_reference` -- one image at a time with an ``nn.Parameter`` and ``torch.optim.SGD``,
  the structure of the upstream loop; for the benchmark and the parity test.

Speed: both do the same N*B forward/backward passes per step. On a CPU core they take the same time
(``bench/sigma.py``: 1.0x at B = 96; 1.4x at B = 8), because a CPU convolution's cost per sample does not
fall with the batch size; the batched form pays off where per-call overhead dominates (a GPU, small B).

Noise: image ``i`` draws all of its noise (first the sigma_f batch, then one batch per step) from its own
``torch.Generator`` seeded by ``(seed, image_ids[i])``. An image's map therefore does not depend on which
other images share its batch, and both implementations see exactly the same draws. Pass the dataset
indices as ``image_ids``. Keeping the same ``seed`` across checkpoints and networks gives them common
random numbers (the same noise), which makes their maps directly comparable.

Deliberate differences from the upstream code (the authors' official implementation):

* the history stores copies of sigma (upstream's CPU snapshot aliased the parameter);
* selection only considers steps that ran (upstream's never-run steps keep entropy 0 and could be picked
  when every real step is more than |H*| away from the target);
* lambda_H / lr are config values (upstream hard-codes them per architecture and ignores its flags);
* the ReLU on the feature is a flag (``relu``; upstream also applies it to logits).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from .params import HALF_LOG_2PI_E, SigmaParams


FeatureFn = Callable[[torch.Tensor], torch.Tensor]


def entropy_map(sigma):
    """Per-cell Gaussian entropy H = ln sigma + 1/2 ln(2 pi e) (torch or numpy; NaN stays NaN)."""
    if isinstance(sigma, torch.Tensor):
        return torch.log(sigma) + HALF_LOG_2PI_E
    return np.log(np.asarray(sigma, dtype=np.float64)) + HALF_LOG_2PI_E


def image_generator(seed: int, image_id: int, device: torch.device | str = "cpu") -> torch.Generator:
    """The generator of all noise drawn for one image: a pure function of (seed, image id)."""
    mixed = np.random.SeedSequence([int(seed), int(image_id), 0x51C]).generate_state(1, dtype=np.uint64)[0]
    return torch.Generator(device=device).manual_seed(int(mixed) & 0x7FFF_FFFF_FFFF_FFFF)


def model_feature_fn(model: torch.nn.Module, tap: str = "stages", index: int = -1,
                     channels_last: bool | None = None) -> FeatureFn:
    """``x -> feature`` for a kdlens ``Classifier``: ``tap`` in stem|stages|preact|pooled|logits.

    Puts the model in eval mode (BatchNorm running statistics, no dropout), as the method requires.
    The estimators take gradients w.r.t. sigma only, so the weights' gradients are neither computed nor
    accumulated. ``logits`` with the estimator's ``relu=True`` reproduces upstream's ReLU-on-logits quirk;
    pass ``relu=False`` for logits. ``channels_last`` (default: on CPU) converts the model's weights (in
    place; values unchanged) and the inputs to the channels-last layout: ~20 % faster convolutions on a
    CPU core; the maps agree with the default layout to float rounding.
    """
    model.eval()
    if tap not in ("stem", "stages", "preact", "pooled", "logits"):
        raise ValueError(f"unknown feature tap {tap!r}")
    if channels_last is None:
        channels_last = next(model.parameters()).device.type == "cpu"
    if channels_last:
        model.to(memory_format=torch.channels_last)

    def fn(x: torch.Tensor) -> torch.Tensor:
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        if tap == "logits":
            return model(x)[0]
        feats = model(x)[1]  # the full forward: hooks on the model (letKD, VAM) and LTB routing apply
        value = getattr(feats, tap)
        return value[index] if isinstance(value, list) else value

    return fn


@dataclass
class SigmaResult:
    """Outputs for N images (CPU tensors). Non-effective images have NaN maps and ``selected_step = -1``."""

    sigma: torch.Tensor  # [N, G, G] the selected sigma map
    entropy: torch.Tensor  # [N, G, G] ln sigma + 1/2 ln 2 pi e
    selected_step: torch.Tensor  # [N] int64
    entropy_history: torch.Tensor  # [N, steps] mean entropy per recorded step; NaN where not run
    feature_loss_history: torch.Tensor  # [N, steps] mse / sigma_f per recorded step; NaN where not run
    lambda_history: torch.Tensor  # [N, steps] lambda_H in force at each step; NaN where not run
    sigma_f: torch.Tensor  # [N] float64 normaliser
    effective: torch.Tensor  # [N] bool, False when sigma_f == 0 (or not finite)
    steps_run: torch.Tensor  # [N] int64
    target: float
    params: dict = field(default_factory=dict)

    @property
    def selected_entropy(self) -> torch.Tensor:
        """[N] mean entropy of the selected map (NaN for non-effective images)."""
        out = torch.full((len(self.selected_step),), float("nan"), dtype=self.entropy_history.dtype)
        ok = self.selected_step >= 0
        out[ok] = self.entropy_history[ok.nonzero().squeeze(1), self.selected_step[ok]]
        return out

    def as_numpy(self) -> dict[str, np.ndarray]:
        """Plain arrays (float32 maps) for ``np.savez``."""
        return {
            "sigma": self.sigma.numpy().astype(np.float32),
            "entropy": self.entropy.numpy().astype(np.float32),
            "selected_step": self.selected_step.numpy(),
            "entropy_history": self.entropy_history.numpy().astype(np.float32),
            "feature_loss_history": self.feature_loss_history.numpy().astype(np.float32),
            "lambda_history": self.lambda_history.numpy().astype(np.float32),
            "sigma_f": self.sigma_f.numpy(),
            "effective": self.effective.numpy(),
            "steps_run": self.steps_run.numpy(),
        }


def summary(result: SigmaResult, tolerance: float = 0.02, step_range: tuple[int, int] = (10, 60)) -> dict:
    """Health numbers for logging: effective count, target hit rate, selected steps."""
    eff = result.effective
    steps = result.selected_step[eff].double()
    gap = (result.selected_entropy[eff] - result.target).abs()
    n = int(eff.sum())
    in_range = ((steps >= step_range[0]) & (steps <= step_range[1])).double()
    return {
        "n_images": int(len(eff)),
        "n_effective": n,
        "hit_target_rate": float((gap < tolerance).double().mean()) if n else float("nan"),
        "max_target_gap": float(gap.max()) if n else float("nan"),
        "selected_step_mean": float(steps.mean()) if n else float("nan"),
        "selected_step_in_range_rate": float(in_range.mean()) if n else float("nan"),
        "boosted_rate": float((result.steps_run[eff] > result.params.get("probe_step", 1 << 30)).double().mean())
        if n else float("nan"),
    }


# ---------------------------------------------------------------------------------------------------
# shared pieces


def _prepare(images: torch.Tensor, p: SigmaParams, seed: int, image_ids):
    if images.ndim != 4:
        raise ValueError(f"images must be a float [N, C, H, W] tensor (normalised), got {tuple(images.shape)}")
    if not images.is_floating_point():
        raise ValueError("images must be normalised floats (e.g. BatchLoader.normalise of the uint8 images)")
    n = len(images)
    ids = list(range(n)) if image_ids is None else [int(i) for i in image_ids]
    if len(ids) != n:
        raise ValueError("image_ids must have one id per image")
    gens = [image_generator(seed, i, images.device) for i in ids]
    return ids, gens


def _up(s: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Nearest upsampling of [K, 1, G, G] cell values to [K, 1, H, W]."""
    return F.interpolate(s, size=size, mode="nearest")


def _mean_entropy(s: torch.Tensor) -> torch.Tensor:
    """[K, 1, G, G] -> [K]: mean over cells of ln sigma + 1/2 ln 2 pi e."""
    return torch.log(s).flatten(1).mean(1) + HALF_LOG_2PI_E


def _feat(fn: FeatureFn, x: torch.Tensor, relu: bool) -> torch.Tensor:
    y = fn(x)
    return F.relu(y) if relu else y


def _select(ent_hist: torch.Tensor, target: float) -> torch.Tensor:
    """[N, steps] (NaN = not run) -> [N] index of the first step whose mean entropy is closest to target."""
    gap = (ent_hist - target).abs()
    gap = torch.where(torch.isnan(gap), torch.full_like(gap, float("inf")), gap)
    return gap.argmin(dim=1)


def _finish(p: SigmaParams, hist_sigma, ent_hist, feat_hist, lam_hist, sigma_f, effective, steps_run):
    """Pick the entropy-matched step per image and pack the result (CPU)."""
    n, g = ent_hist.shape[0], p.grid
    sel = _select(ent_hist, p.target)
    sel = torch.where(effective, sel, torch.full_like(sel, -1))
    sigma = torch.full((n, g, g), float("nan"), dtype=hist_sigma.dtype)
    for i in range(n):
        if sel[i] >= 0:
            sigma[i] = hist_sigma[i, sel[i]]
    return SigmaResult(sigma=sigma, entropy=entropy_map(sigma), selected_step=sel, entropy_history=ent_hist,
                       feature_loss_history=feat_hist, lambda_history=lam_hist, sigma_f=sigma_f,
                       effective=effective, steps_run=steps_run, target=p.target, params=p.model_dump())


def _progress(progress, total: int, desc: str):
    """(bar, owned): a caller's tqdm is updated, ``True`` makes one, ``False`` none."""
    if progress is False or progress is None:
        return None, False
    if progress is True:
        return tqdm(total=total, desc=desc, leave=False, disable=None), True
    return progress, False


# ---------------------------------------------------------------------------------------------------
# batched


def estimate_sigma(feature_fn: FeatureFn, images: torch.Tensor, params: SigmaParams | None = None, *,
                   seed: int = 0, image_ids=None, progress=True, desc: str = "sigma") -> SigmaResult:
    """Batched sigma estimation for N images at once (see the module docstring).

    ``images``: normalised float [N, C, H, W] on the model's device. ``feature_fn(x)`` returns the chosen
    layer's feature for a batch (see :func:`model_feature_fn`); the model must be in eval mode.
    ``progress``: True (own tqdm bar over steps), False, or a caller's tqdm that gets ``steps`` updates
    (e.g. one bar over checkpoints x steps).
    """
    p = params or SigmaParams()
    ids, gens = _prepare(images, p, seed, image_ids)
    n, c, h, w = images.shape
    b, g, dev = p.noise_batch, p.grid, images.device
    per_chunk = n if p.max_samples is None else max(1, p.max_samples // b)
    bar, owned = _progress(progress, p.steps, desc)

    # clean features and the normaliser sigma_f (no grad)
    with torch.no_grad():
        y0 = torch.cat([_feat(feature_fn, images[i:i + per_chunk], p.relu) for i in range(0, n, per_chunk)])
        sigma_f = torch.empty(n, dtype=torch.float64)
        for i0 in range(0, n, per_chunk):
            idx = list(range(i0, min(n, i0 + per_chunk)))
            eps = torch.empty((len(idx), b, c, h, w), device=dev, dtype=images.dtype)
            for j, i in enumerate(idx):
                torch.randn((b, c, h, w), generator=gens[i], device=dev, dtype=images.dtype, out=eps[j])
            xn = (images[idx][:, None] + p.sigma0 * eps).reshape(len(idx) * b, c, h, w)
            f = _feat(feature_fn, xn, p.relu).reshape(len(idx), b, *y0.shape[1:])
            sigma_f[idx] = (f - y0[idx][:, None]).square().flatten(1).mean(1).double().cpu()
    effective = torch.isfinite(sigma_f) & (sigma_f > 0)
    sf_dev = sigma_f.to(dev, images.dtype)

    sig = torch.full((n, 1, g, g), p.sigma0, device=dev, dtype=images.dtype)
    lam = torch.full((n,), float(p.lambda_h), device=dev, dtype=torch.float64)
    hist_sigma = torch.full((n, p.steps, g, g), float("nan"), dtype=images.dtype)
    ent_hist = torch.full((n, p.steps), float("nan"), dtype=torch.float64)
    feat_hist = torch.full_like(ent_hist, float("nan"))
    lam_hist = torch.full_like(ent_hist, float("nan"))
    steps_run = torch.zeros(n, dtype=torch.long)
    active = [i for i in range(n) if bool(effective[i])]
    lo, hi = p.clamp
    steps_done = 0
    for t in range(p.steps):
        if not active:
            break
        a = torch.tensor(active, device=dev)
        a_cpu = torch.tensor(active)
        with torch.no_grad():
            sig[a] = sig[a].clamp(lo, hi)
        hist_sigma[a_cpu, t] = sig[a, 0].cpu()
        grad = torch.empty((len(active), 1, g, g), device=dev, dtype=images.dtype)
        ent_t = torch.empty(len(active), dtype=torch.float64)
        feat_t = torch.empty(len(active), dtype=torch.float64)
        for j0 in range(0, len(active), per_chunk):
            chunk = active[j0:j0 + per_chunk]
            k = len(chunk)
            ci = a[j0:j0 + k]
            eps = torch.empty((k, b, c, h, w), device=dev, dtype=images.dtype)
            for j, i in enumerate(chunk):
                torch.randn((b, c, h, w), generator=gens[i], device=dev, dtype=images.dtype, out=eps[j])
            s = sig[ci].detach().requires_grad_(True)
            xn = (images[ci][:, None] + _up(s, (h, w))[:, None] * eps).reshape(k * b, c, h, w)
            f = _feat(feature_fn, xn, p.relu).reshape(k, b, *y0.shape[1:])
            feat_term = (f - y0[ci][:, None]).square().flatten(1).mean(1) / sf_dev[ci]
            ent = _mean_entropy(s)
            loss = (feat_term - lam[ci].to(s.dtype) * ent).sum()
            grad[j0:j0 + k] = torch.autograd.grad(loss, s)[0]
            ent_t[j0:j0 + k] = ent.detach().double().cpu()
            feat_t[j0:j0 + k] = feat_term.detach().double().cpu()
        ent_hist[a_cpu, t] = ent_t
        feat_hist[a_cpu, t] = feat_t
        lam_hist[a_cpu, t] = lam[a].cpu()
        steps_run[a_cpu] = t + 1
        with torch.no_grad():
            sig[a] = sig[a].add(grad, alpha=-p.lr)  # what torch.optim.SGD does
        if t == p.probe_step - 1:
            reached = ent_hist[a_cpu, :t + 1].max(dim=1).values > p.target
            lam[a[~reached.to(dev)]] *= p.lambda_boost
            active = [i for i, r in zip(active, reached.tolist()) if not r]
        steps_done += 1
        if bar is not None:
            bar.update(1)
            bar.set_postfix(active=len(active), refresh=False)
    if bar is not None:
        bar.update(p.steps - steps_done)
        if owned:
            bar.close()
    return _finish(p, hist_sigma, ent_hist, feat_hist, lam_hist, sigma_f, effective.cpu(), steps_run)


# ---------------------------------------------------------------------------------------------------
# one image at a time, the upstream loop's structure


def estimate_sigma_reference(feature_fn: FeatureFn, images: torch.Tensor, params: SigmaParams | None = None, *,
                             seed: int = 0, image_ids=None, progress=False, desc: str = "sigma (1 by 1)"
                             ) -> SigmaResult:
    """One image at a time: an ``nn.Parameter`` sigma, ``torch.optim.SGD``, ``loss.backward()`` per step.

    Same noise draws per image as :func:`estimate_sigma` for the same ``seed``/``image_ids``.
    ``max_samples`` is ignored (each forward holds B samples).
    """
    p = params or SigmaParams()
    ids, gens = _prepare(images, p, seed, image_ids)
    n, c, h, w = images.shape
    b, g, dev = p.noise_batch, p.grid, images.device
    lo, hi = p.clamp
    hist_sigma = torch.full((n, p.steps, g, g), float("nan"), dtype=images.dtype)
    ent_hist = torch.full((n, p.steps), float("nan"), dtype=torch.float64)
    feat_hist = torch.full_like(ent_hist, float("nan"))
    lam_hist = torch.full_like(ent_hist, float("nan"))
    steps_run = torch.zeros(n, dtype=torch.long)
    sigma_f = torch.zeros(n, dtype=torch.float64)
    effective = torch.zeros(n, dtype=torch.bool)
    bar, owned = _progress(progress, n * p.steps, desc)
    for i in range(n):
        x = images[i:i + 1]
        gen = gens[i]
        with torch.no_grad():
            y0 = _feat(feature_fn, x, p.relu)
            eps = torch.randn((b, c, h, w), generator=gen, device=dev, dtype=images.dtype)
            f = _feat(feature_fn, x + p.sigma0 * eps, p.relu)
            sf = F.mse_loss(f, y0.expand_as(f))
        sigma_f[i] = float(sf)
        if not (math.isfinite(sigma_f[i]) and sigma_f[i] > 0):
            if bar is not None:
                bar.update(p.steps)
            continue
        effective[i] = True
        s = torch.nn.Parameter(torch.full((1, 1, g, g), p.sigma0, device=dev, dtype=images.dtype))
        opt = torch.optim.SGD([s], lr=p.lr, momentum=0.0, weight_decay=0.0)
        lam = float(p.lambda_h)
        for t in range(p.steps):
            with torch.no_grad():
                s.clamp_(lo, hi)
            hist_sigma[i, t] = s.detach()[0, 0].clone().cpu()  # a copy, never an alias (upstream bug 2)
            eps = torch.randn((b, c, h, w), generator=gen, device=dev, dtype=images.dtype)
            f = _feat(feature_fn, x + _up(s, (h, w)) * eps, p.relu)
            feat_term = F.mse_loss(f, y0.expand_as(f)) / sf
            ent = _mean_entropy(s)[0]
            loss = feat_term - lam * ent
            opt.zero_grad(set_to_none=True)
            loss.backward(inputs=[s])
            opt.step()
            ent_hist[i, t] = float(ent.detach())
            feat_hist[i, t] = float(feat_term.detach())
            lam_hist[i, t] = lam
            steps_run[i] = t + 1
            if bar is not None:
                bar.update(1)
            if t == p.probe_step - 1:
                if float(ent_hist[i, :t + 1].max()) > p.target:
                    if bar is not None:
                        bar.update(p.steps - t - 1)
                    break
                lam *= p.lambda_boost
    if owned:
        bar.close()
    return _finish(p, hist_sigma, ent_hist, feat_hist, lam_hist, sigma_f, effective, steps_run)
