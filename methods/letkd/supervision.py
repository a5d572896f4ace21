"""Teacher-derived supervision, built once per teacher before any student trains (letKD,
Gorgun et al., BMVC 2023: the supplement's Alg. 1 and 2).

Two targets come from the frozen teacher run over the **un-augmented** training set, one feature vector
per spatial location (every location of every image is a sample):

* **penultimate** (``Features.stages[-1]``): k-means with ``k`` centroids ρ_1..ρ_k (faiss, L2, all points,
  no PCA/whitening, fixed seed; AFK-MC² seeding by default where upstream seeded at random: on the
  scenes teacher random seeding ends 8% higher in inertia). Online a location's soft target is
  softmax_k(-τ·‖f − ρ_k‖²).
* **intermediate** (``Features.stages[inter_stage]``): LDA (scikit-learn, SVD solver) to ``lda_dim``
  components, z = (f − x̄)·W. Each class c is split by k-means into ``subclasses`` sub-classes with
  centres ρ_{c,j} (class-major index s = subclasses·c + j). Every location is re-assigned to the nearest
  centre *within its own class*, s(i); the prototype μ_s is the mean of the z assigned to s; ŝ(i) is the
  nearest prototype over *all* sub-classes. The teacher decision matrix is

      D[s, s'] = |{i : s(i) = s, ŝ(i) = s'}| / |{i : s(i) = s}|

  (each row a distribution; a sub-class that received no location gets the one-hot row D[s, s] = 1).
  Online the target of a location with label y is D[k*] with k* the nearest centre among y's sub-classes.

Either map may first be average-pooled to a side of ``penult_size`` / ``inter_size`` (0 = as is), the
reference implementation's "downscale" for pairs whose student maps are smaller than the teacher's.

On disk (``store.save_supervision``, methods/letkd/store.py): ``supervision.npz`` (deterministic bytes: sorted members, fixed zip
timestamps) plus ``card.json`` with every array's shape and dtype, the grids, the npz's SHA-256 and the
build statistics. ``store.load_supervision`` checks all of it and reports a missing or corrupt file in one line.
No MLflow here: the stage logs what ``build_supervision`` returns.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from dataset.store import Prepared, Split
from core.device import device
from core.errors import KdlensError
from dataset.loader import loader_for

from .store import FORMAT
from models.base import feature_shapes


# ----------------------------------------------------------------------------------------------- k-means
@dataclass
class KMeansResult:
    centroids: np.ndarray  # [k, d] float32
    labels: np.ndarray  # [n] int64: nearest final centroid
    inertia: np.ndarray  # [iterations] the objective (sum of squared distances) at each iteration
    final_inertia: float  # sum of squared distances to the final centroids
    device: str  # "faiss-gpu" or "faiss-cpu"
    seconds: float


def faiss_use_gpu() -> bool:
    """A faiss GPU index when this faiss build sees a GPU and kdlens runs on CUDA (KDLENS_DEVICE=cpu: no)."""
    import faiss

    num_gpus = faiss.get_num_gpus() if hasattr(faiss, "get_num_gpus") else 0
    return num_gpus > 0 and torch.cuda.is_available() and device().type == "cuda"


def nearest(x: np.ndarray, centroids: np.ndarray, gpu: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """(index, squared distance) of the nearest centroid for each row of ``x`` (exact L2, faiss)."""
    import faiss

    index = faiss.IndexFlatL2(centroids.shape[1])
    if gpu:
        index = faiss.index_cpu_to_all_gpus(index)
    index.add(np.ascontiguousarray(centroids, dtype=np.float32))
    dist, idx = index.search(np.ascontiguousarray(x, dtype=np.float32), 1)
    return idx[:, 0].astype(np.int64), np.maximum(dist[:, 0].astype(np.float64), 0.0)


INITS = ("afkmc2", "kmeans++", "random")


def kmeans(x: np.ndarray, k: int, iterations: int, seed: int, n_init: int = 1, init: str = "afkmc2",
           gpu: bool | None = None) -> KMeansResult:
    """Lloyd's k-means with faiss on every row of ``x`` (no sub-sampling), seeded from ``seed``.

    ``init``: "afkmc2" (AFK-MC², Bachem et al. NeurIPS 2016: k-means++-quality seeding at O(n·d) cost),
    "kmeans++" (exact, O(n·k·d) sequential passes: slow for large k on a CPU) or "random" (upstream letKD's
    faiss default; ~8% higher final inertia on the scenes teacher). ``n_init`` restarts (seeds ``seed``,
    ``seed+1``, ...) keep the lowest final objective; ``inertia`` is that restart's objective at each
    iteration (faiss stops early once it no longer changes).
    """
    import faiss

    seeding = {"afkmc2": faiss.ClusteringInitMethod_AFK_MC2, "random": faiss.ClusteringInitMethod_RANDOM,
               "kmeans++": faiss.ClusteringInitMethod_KMEANS_PLUS_PLUS}
    if init not in seeding:
        raise ValueError(f"unknown k-means init {init!r}; choose one of {', '.join(INITS)}")

    x = np.ascontiguousarray(x, dtype=np.float32)
    n, d = x.shape
    if not 1 <= k <= n:
        raise ValueError(f"k-means needs 1 <= k <= number of points, got k={k} for {n} points")
    gpu = faiss_use_gpu() if gpu is None else gpu
    t0 = time.perf_counter()
    best = None
    for restart in range(n_init):
        km = faiss.Kmeans(d, k, niter=iterations, seed=seed + restart, gpu=bool(gpu), verbose=False,
                          init_method=seeding[init],
                          max_points_per_centroid=n // k + 1,  # every point is used (faiss samples otherwise)
                          min_points_per_centroid=1)  # small data sets are allowed; no warning spam
        km.train(x)
        if best is None or km.obj[-1] < best.obj[-1]:
            best = km
    labels, dist = nearest(x, best.centroids, gpu=bool(gpu))
    seconds = time.perf_counter() - t0
    return KMeansResult(centroids=best.centroids.astype(np.float32), labels=labels,
                        inertia=np.asarray(best.obj, dtype=np.float64), final_inertia=float(dist.sum()),
                        device="faiss-gpu" if gpu else "faiss-cpu", seconds=seconds)


# --------------------------------------------------------------------------------------- LDA sub-classes
@dataclass
class SubclassTargets:
    scalings: np.ndarray  # [C, dim]
    xbar: np.ndarray  # [C]
    centers: np.ndarray  # [num_classes * subclasses, dim]
    prototypes: np.ndarray  # [num_classes * subclasses, dim]
    counts: np.ndarray  # [num_classes * subclasses]
    decision: np.ndarray  # [num_classes * subclasses, num_classes * subclasses]
    own: np.ndarray = field(repr=False)  # [n] s(i): sub-class within the own class
    seconds: float = 0.0


def lda_project(f: np.ndarray, scalings: np.ndarray, xbar: np.ndarray) -> np.ndarray:
    """z = (f - x̄) · W (scikit-learn's ``transform`` for the SVD solver, truncated to W's columns)."""
    return ((f - xbar) @ scalings).astype(np.float32)


def nearest_in_class(z: np.ndarray, labels: np.ndarray, centers: np.ndarray, subclasses: int) -> np.ndarray:
    """s(i) = subclasses·y_i + argmin_j ‖z_i − centers[subclasses·y_i + j]‖²: only the own class's centres."""
    cand = centers.reshape(-1, subclasses, centers.shape[1])[labels]  # [n, subclasses, dim]
    d = ((z[:, None, :] - cand) ** 2).sum(-1)
    return labels.astype(np.int64) * subclasses + d.argmin(1)


def decision_matrix(own: np.ndarray, decided: np.ndarray, size: int) -> np.ndarray:
    """D[s, s'] = fraction of the locations of sub-class s (own) that the teacher decides as s'."""
    counts = np.zeros((size, size), dtype=np.float64)
    np.add.at(counts, (own, decided), 1.0)
    totals = counts.sum(1, keepdims=True)
    d = np.divide(counts, totals, out=np.zeros_like(counts), where=totals > 0)
    empty = totals[:, 0] == 0
    d[empty, np.flatnonzero(empty)] = 1.0  # a sub-class with no location decides itself
    return d.astype(np.float32)


def lda_subclasses(f: np.ndarray, labels: np.ndarray, num_classes: int, dim: int, subclasses: int,
                   iterations: int, seed: int, n_init: int = 1, init: str = "afkmc2", gpu: bool | None = None,
                   chunk: int = 1 << 18) -> SubclassTargets:
    """LDA to ``dim`` components, ``subclasses`` k-means sub-classes per class, the decision matrix."""
    from sklearn.discriminant_analysis import LinearDiscriminantAnalysis

    t0 = time.perf_counter()
    present = np.unique(labels)
    if len(present) != num_classes:
        raise KdlensError(f"supervision: the training set has {len(present)} of {num_classes} classes; "
                          "every class needs locations for its sub-classes")
    max_dim = min(f.shape[1], num_classes - 1)
    if not 1 <= dim <= max_dim:
        raise KdlensError(f"supervision.lda_dim: {dim} is not in [1, {max_dim}] = [1, min(channels "
                          f"{f.shape[1]}, classes-1 {num_classes - 1})]")
    lda = LinearDiscriminantAnalysis(n_components=dim, solver="svd").fit(f, labels)
    scalings = np.ascontiguousarray(lda.scalings_[:, :dim], dtype=np.float32)
    xbar = np.asarray(lda.xbar_, dtype=np.float32)
    z = np.concatenate([lda_project(f[i:i + chunk], scalings, xbar) for i in range(0, len(f), chunk)])
    centers = np.zeros((num_classes * subclasses, dim), np.float32)
    for c in range(num_classes):
        zc = z[labels == c]
        if len(zc) < subclasses:
            raise KdlensError(f"supervision.subclasses: class {c} has {len(zc)} locations, fewer than "
                              f"{subclasses} sub-classes")
        km = kmeans(zc, subclasses, iterations, seed + c, n_init=n_init, init=init, gpu=gpu)
        centers[c * subclasses:(c + 1) * subclasses] = km.centroids
    own = np.concatenate([nearest_in_class(z[i:i + chunk], labels[i:i + chunk], centers, subclasses)
                          for i in range(0, len(z), chunk)])
    size = num_classes * subclasses
    counts = np.bincount(own, minlength=size)
    sums = np.zeros((size, dim), np.float64)
    np.add.at(sums, own, z)
    prototypes = np.where(counts[:, None] > 0, sums / np.maximum(counts, 1)[:, None], centers).astype(np.float32)
    decided, _ = nearest(z, prototypes, gpu=bool(gpu) if gpu is not None else faiss_use_gpu())
    return SubclassTargets(scalings=scalings, xbar=xbar, centers=centers, prototypes=prototypes,
                           counts=counts.astype(np.int64), decision=decision_matrix(own, decided, size), own=own,
                           seconds=time.perf_counter() - t0)


# ------------------------------------------------------------------------------------ teacher features
def location_rows(fmap: torch.Tensor, side: int = 0) -> torch.Tensor:
    """[B, C, H, W] -> [B·H·W, C] rows in (image, h, w) order, after average-pooling to side×side if side>0."""
    if side and fmap.shape[-1] != side:
        fmap = F.adaptive_avg_pool2d(fmap, side)
    return fmap.permute(0, 2, 3, 1).reshape(-1, fmap.shape[1])


@torch.no_grad()
def teacher_features(teacher: torch.nn.Module, split: Split, mean, std, taps: dict[str, tuple[int, int]],
                     batch_size: int, dev: torch.device, desc: str = "teacher features"
                     ) -> tuple[dict[str, np.ndarray], dict[str, list[int]]]:
    """Per-location teacher features of an un-augmented split, batched.

    ``taps``: name -> (index into ``Features.stages``, pooled side or 0). Returns name -> float32
    [N·H·W, C] and name -> grid [H, W] (after pooling).
    """
    teacher.eval()
    loader = loader_for(split, mean, std, batch_size, dev)  # no augmentation, dataset order
    out: dict[str, np.ndarray] = {}
    grids: dict[str, list[int]] = {}
    row = {name: 0 for name in taps}
    for x, _, _ in tqdm(loader.batches(), total=len(loader), desc=desc, disable=None):
        _, feats = teacher(x)
        for name, (stage, side) in taps.items():
            fmap = feats.stages[stage].float()
            if side and side > fmap.shape[-1]:
                raise KdlensError(f"supervision.{name}_size: {side} is larger than the teacher's "
                                  f"{fmap.shape[-1]}x{fmap.shape[-1]} map at stage {stage}")
            rows = location_rows(fmap, side)
            if name not in out:
                h, w = (side, side) if side else fmap.shape[-2:]
                grids[name] = [int(h), int(w)]
                out[name] = np.empty((len(split.labels) * h * w, fmap.shape[1]), np.float32)
            out[name][row[name]:row[name] + len(rows)] = rows.cpu().numpy()
            row[name] += len(rows)
    return out, grids


# ---------------------------------------------------------------------------------------------- build
@dataclass
class Built:
    arrays: dict[str, np.ndarray]
    info: dict  # goes into card.json
    kmeans: KMeansResult
    subclasses: SubclassTargets
    seconds: dict[str, float]


def build_supervision(teacher: torch.nn.Module, data: Prepared, cfg, dev: torch.device) -> Built:
    """Everything of the module docstring, from a trained teacher and a prepared dataset.

    ``cfg`` is the ``supervision`` params section (methods.letkd.params.SupervisionParams).
    """
    n = len(feature_shapes(teacher, data.input_size)["stages"])
    if not -n <= cfg.inter_stage < n or cfg.inter_stage % n == n - 1:
        raise KdlensError(f"supervision.inter_stage: {cfg.inter_stage} is not an intermediate stage of the "
                          f"teacher (it has {n} stages; use -{n}..-2 or 0..{n - 2})")
    t0 = time.perf_counter()
    taps = {"penult": (-1, cfg.penult_size), "inter": (cfg.inter_stage, cfg.inter_size)}
    feats, grids = teacher_features(teacher, data.train, data.card["mean"], data.card["std"], taps,
                                    cfg.batch_size, dev)
    built = from_features(feats["penult"], feats["inter"], data.train.labels, grids, data.num_classes, cfg)
    built.seconds = {"features": time.perf_counter() - t0 - built.seconds["total"], **built.seconds,
                     "total": time.perf_counter() - t0}
    return built


def from_features(penult: np.ndarray, inter: np.ndarray, image_labels: np.ndarray, grids: dict[str, list[int]],
                  num_classes: int, cfg) -> Built:
    """The supervision arrays and card info from per-location teacher features (``teacher_features``'
    output: rows in (image, h, w) order, ``grids`` = {"penult": [H, W], "inter": [H, W]})."""
    t0 = time.perf_counter()
    if cfg.k > len(penult):
        raise KdlensError(f"supervision.k: {cfg.k} centroids for only {len(penult)} teacher locations; lower it")
    km = kmeans(penult, cfg.k, cfg.iterations, cfg.seed, n_init=cfg.n_init, init=cfg.init)
    labels = np.repeat(np.asarray(image_labels, dtype=np.int64), grids["inter"][0] * grids["inter"][1])
    sub = lda_subclasses(inter, labels, num_classes, cfg.lda_dim, cfg.subclasses, cfg.iterations, cfg.seed,
                         n_init=cfg.n_init, init=cfg.init)
    counts = np.bincount(km.labels, minlength=cfg.k).astype(np.int64)
    arrays = {
        "centroids": km.centroids, "centroid_counts": counts, "kmeans_inertia": km.inertia,
        "lda_scalings": sub.scalings, "lda_xbar": sub.xbar, "sub_centers": sub.centers,
        "sub_prototypes": sub.prototypes, "sub_counts": sub.counts, "decision": sub.decision,
    }
    p = counts[counts > 0] / counts.sum()
    info = {
        "format": FORMAT,
        "num_classes": num_classes,
        "k": cfg.k, "subclasses": cfg.subclasses, "lda_dim": cfg.lda_dim, "inter_stage": cfg.inter_stage,
        "penult_grid": list(grids["penult"]), "inter_grid": list(grids["inter"]),
        "penult_channels": int(penult.shape[1]), "inter_channels": int(inter.shape[1]),
        "locations": {"penult": int(len(penult)), "inter": int(len(inter))},
        "kmeans_device": km.device, "final_inertia": km.final_inertia,
        "empty_clusters": int((counts == 0).sum()),
        "code_perplexity": float(np.exp(-(p * np.log(p)).sum())),  # effective number of centroids used
        "subclass_self_decision": float(np.mean(np.diag(sub.decision))),  # mean D[s, s]
    }
    seconds = {"kmeans": km.seconds, "lda_subclasses": sub.seconds, "total": time.perf_counter() - t0}
    return Built(arrays=arrays, info=info, kmeans=km, subclasses=sub, seconds=seconds)


# ----------------------------------------------------------------------------------------------- plots
def cluster_size_figure(counts: np.ndarray, title: str = "k-means cluster sizes"):
    """Histogram of the number of teacher locations per centroid (log-count axis)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.6))
    ax.hist(counts, bins=min(50, max(10, len(counts) // 8)), color="tab:blue", alpha=0.8)
    ax.set(xlabel="locations per centroid", ylabel="centroids", yscale="log",
           title=f"{title} (k={len(counts)}, empty={(counts == 0).sum()})")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig
