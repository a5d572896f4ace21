"""The frozen teacher's outputs during a student's training: a fast live forward, or a cache.

Live: the teacher in eval mode with its BatchNorms folded into the convolutions (models/fold.py), no
parameter needing grad, its forward compiled (``trainer.compile_teacher``) or else channels-last; the
forward a trainer step pays under every other method.

Cache (stage ``cache_teacher``): the training views are a pure function of (seed, epoch, sample index)
(dataset/loader.py), so the teacher's logits for every view a student will see can be computed once and
shared by every logit-only method and every experiment of a sweep. The cache runs the teacher over the
very batches the training loader yields (same seed, batch size, order), so a student trained from it is
bit-identical on CPU to one trained with the live teacher. Storage per epoch and sample:

* ``top_k = 0``: all K logits (``dtype`` float32, or float16: ~3 significant digits);
* ``top_k = k``: the k largest logits and their classes, plus r = log Σ_{j ∉ top-k} exp(z_j); a read
  gives the other K − k classes the logit r − log(K − k) each. At T = 1 that keeps every top-k
  probability and the tail's total mass exactly; lost is how the tail mass splits across its classes
  (so KD's KL at T > 1 changes slightly, DKD's non-target term more).

With ``extra_views`` (``teacher_cache.extra_views``: the strong view, dataset/augment.py) it also holds
the teacher's logits for those views of every batch, stored alike under ``<view>_<array>``; a method
that reads such a view (``Method.extra_views``) uses the cache only if it holds them.
"""
from __future__ import annotations

import math
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from models.base import Features
from models.fold import fold_batchnorm

from core.errors import KdlensError
from core.files import read_json, write_json

CARD = "card.json"


class FrozenTeacher(torch.nn.Module):
    """The teacher as a student's training runs it: eval mode, BN folded, no grads, and either

    * ``compiled``: its forward through ``torch.compile`` (inductor: fused pointwise ops, its own conv
      layouts, maps handed back in eager strides; one compile per batch shape, seconds), or
    * eager, channels-last convolutions, the maps copied back contiguous.

    Either way no method sees a new memory layout. Measured on this CPU, batch 64, ms per forward,
    eager unfolded / eager folded channels-last / compiled: resnet56 ≈ 130 / 115 / 84–96, resnet20
    ≈ 50 / 44 / 30, resnet32x4 ≈ 800 / 716 / 610–640."""

    def __init__(self, teacher: torch.nn.Module, input_size: int, compiled: bool = False):
        super().__init__()
        self.net = fold_batchnorm(teacher, input_size)[0]
        if compiled:
            # A compiled bound method, not a submodule: the weights stay registered once, under ``net``.
            self._run = torch.compile(self.net.forward, dynamic=False)
        else:
            self._use_eager()

    def _use_eager(self) -> None:
        self.net.to(memory_format=torch.channels_last)
        self._run = self._eager

    def _eager(self, x: torch.Tensor):
        logits, f = self.net(x.contiguous(memory_format=torch.channels_last))
        return logits, Features(stem=f.stem.contiguous(), stages=[s.contiguous() for s in f.stages],
                                preact=[s.contiguous() for s in f.preact], pooled=f.pooled)

    def forward(self, x: torch.Tensor):
        try:
            return self._run(x)
        except torch._dynamo.exc.BackendCompilerFailed as e:
            # No working C++ compiler (CPU) or Triton (CUDA): the same outputs, uncompiled, are better
            # than a failed run; say why once.
            warnings.warn(f"trainer.compile_teacher: torch.compile failed ({str(e).strip().splitlines()[0]}); "
                          "the teacher runs uncompiled (set trainer.compile_teacher: false to skip the attempt)",
                          stacklevel=2)
            self._use_eager()
            return self._run(x)


def frozen_teacher(teacher: torch.nn.Module, input_size: int, compiled: bool = False) -> FrozenTeacher:
    return FrozenTeacher(teacher, input_size, compiled).eval()


@dataclass(frozen=True)
class Views:
    """What fixes the training views (and so the cached logits): checked before a cache is used."""

    seed: int
    epochs: int
    batch_size: int
    augment: bool
    drop_last: bool
    num_train: int

    @classmethod
    def of(cls, loader, epochs: int) -> "Views":
        return cls(loader.seed, epochs, loader.batch_size, loader.augment, loader.drop_last, loader.num_samples)


def _prefix(view: str | None) -> str:
    """Where a view's arrays are named: the standard view's as they always were, an extra view's prefixed."""
    return "" if view is None else f"{view}_"


def build_cache(teacher: torch.nn.Module, loader, epochs: int, out_dir: Path, dtype: str, top_k: int,
                inputs: dict, extra_views: tuple[str, ...] = ()) -> dict:
    """Run ``teacher`` over every training batch of epochs 1..``epochs`` (and over each of its
    ``extra_views``); write the arrays and the card (with ``inputs``: the data's and the teacher's SHA-256,
    checked before the cache is used)."""
    n, k = loader.num_samples, None
    arrays: dict[str, np.ndarray] = {}
    t0 = time.perf_counter()
    with torch.no_grad():
        for epoch in tqdm(range(1, epochs + 1), desc="teacher cache", disable=None):
            for x, _, idx, views in loader.view_batches(epoch, extra=extra_views):
                for view, images in ((None, x), *views.items()):
                    z = teacher(images)[0].float()
                    if k is None:
                        k = z.shape[1]
                        arrays = {f"{_prefix(v)}{name}": a for v in (None, *extra_views)
                                  for name, a in _empty(epochs, n, k, dtype, top_k).items()}
                    _store(arrays, _prefix(view), epoch - 1, idx.cpu().numpy(), z.cpu(), top_k)
    out_dir.mkdir(parents=True, exist_ok=True)
    for name, a in arrays.items():
        np.save(out_dir / f"{name}.npy", a)
    card = {"enabled": True, **inputs, "views": Views.of(loader, epochs).__dict__,
            "extra_views": list(extra_views), "num_classes": k, "dtype": dtype, "top_k": top_k,
            "arrays": {name: {"shape": list(a.shape), "dtype": str(a.dtype)} for name, a in arrays.items()},
            "bytes": int(sum(a.nbytes for a in arrays.values())), "seconds": time.perf_counter() - t0}
    write_json(out_dir / CARD, card)
    return card


def _empty(epochs: int, n: int, k: int, dtype: str, top_k: int) -> dict[str, np.ndarray]:
    if top_k == 0:
        return {"logits": np.zeros((epochs, n, k), dtype=dtype)}
    if top_k >= k:
        raise KdlensError(f"teacher_cache.top_k: {top_k} must be below the class count {k} (0 = all logits)")
    return {"top_values": np.zeros((epochs, n, top_k), dtype=dtype),
            "top_classes": np.zeros((epochs, n, top_k), dtype=np.int16 if k < 2**15 else np.int32),
            "tail_logsumexp": np.zeros((epochs, n), dtype=np.float32)}


def _store(arrays: dict, prefix: str, e: int, idx: np.ndarray, z: torch.Tensor, top_k: int) -> None:
    if top_k == 0:
        arrays[f"{prefix}logits"][e, idx] = z.numpy()
        return
    values, classes = z.topk(top_k, dim=1)
    tail = z.scatter(1, classes, float("-inf")).logsumexp(dim=1)
    arrays[f"{prefix}top_values"][e, idx] = values.numpy()
    arrays[f"{prefix}top_classes"][e, idx] = classes.numpy()
    arrays[f"{prefix}tail_logsumexp"][e, idx] = tail.numpy()


def open_cache(cache_dir: str | Path, views: Views, inputs: dict, device: torch.device,
               extra_views: tuple[str, ...] = ()):
    """(TeacherCache, "") when ``cache_dir`` holds logits for exactly these views (and ``extra_views``) of
    this teacher and data, else (None, why not): the caller then runs the teacher live."""
    card_path = Path(cache_dir) / CARD
    if not card_path.is_file():
        return None, f"no {card_path}"
    card = read_json(card_path)
    if not card.get("enabled"):
        return None, "teacher_cache.enabled is false"
    if Views(**card["views"]) != views:
        return None, f"cached views {card['views']} differ from this training's {views.__dict__}"
    stale = [k for k, v in inputs.items() if card.get(k) != v]
    if stale:
        return None, f"cache built from another {stale[0].removesuffix('_sha256')}"
    missing = [v for v in extra_views if v not in card.get("extra_views", [])]
    if missing:
        return None, f"the cache holds no {missing[0]!r} view (teacher_cache.extra_views: [{missing[0]}])"
    return TeacherCache(cache_dir, device), ""


class TeacherCache:
    """Cached teacher logits by (epoch, sample index), on ``device``; called like the trainer's teacher."""

    def __init__(self, cache_dir: str | Path, device: torch.device):
        cache_dir = Path(cache_dir)
        self.card = read_json(cache_dir / CARD)
        self.views = Views(**self.card["views"])
        self.top_k = self.card["top_k"]
        try:
            self.arrays = {name: torch.from_numpy(np.load(cache_dir / f"{name}.npy")).to(device)
                           for name in self.card["arrays"]}
        except (OSError, ValueError) as e:
            raise KdlensError(f"{cache_dir}: unreadable teacher cache ({e}); re-run stage cache_teacher") from None

    def __call__(self, x: torch.Tensor, index: torch.Tensor, epoch: int, view: str | None = None):
        """The logits of samples ``index`` in ``epoch``, of the standard view or the extra ``view``."""
        def read(name: str) -> torch.Tensor:
            return self.arrays[f"{_prefix(view)}{name}"][epoch - 1, index]

        if self.top_k == 0:
            return read("logits").float(), None
        k = self.card["num_classes"]
        tail = read("tail_logsumexp") - math.log(k - self.top_k)
        z = tail[:, None].expand(len(index), k).clone()
        z.scatter_(1, read("top_classes").long(), read("top_values").float())
        return z, None
