"""Knowledge metrics on sigma-entropy maps (Cheng et al., "Explaining Knowledge Distillation by Quantifying the
Knowledge", CVPR 2020: the metrics of its Hypotheses 1-3).

Inputs are entropy maps ``H = ln sigma + 1/2 ln(2 pi e)`` of shape ``[N, K, G, G]`` (images x checkpoints x
grid; NaN where an image had no map, i.e. sigma_f = 0), foreground masks on the grid ``[N, G, G]`` (bool,
True = foreground), the checkpoint epochs ``[K]`` (ascending, the last one is "final") and the analysed
layer's cumulative weight distance at those epochs ``[K]`` (``explain.weight_distance``).

Definitions (where kdlens deliberately differs from the upstream code, the authors' official implementation,
it says so):

* **Background baseline** ``Hbg[k]``: mean over the analysed images of the mean entropy of the image's
  background cells, one constant per checkpoint, per network run -- the upstream code's dataset-level
  value (the paper's text reads as a per-image background mean; ``background="per_image"`` gives that).
  Student and baseline therefore have different baselines, by design (as upstream). Images without any
  background cell do not enter the average.
* **Concept cell**: ``Hbg - H_i > b`` (b = 0.2 nats). ``N_fg`` / ``N_bg`` count them in the foreground /
  background cells, so ``N_fg + N_bg <= G^2``.
* **lambda** (discriminative ratio) ``= E_x[N_fg / (N_fg + N_bg)]``. An image without any concept
  contributes 0 (upstream, ``empty="zero"``, biased downward) or is left out (``empty="exclude"``).
* **Peak**: ``m(x) = first argmax_k N_fg(x, k)``; its epoch and ``D(x) = WD(m(x))``.
  ``D_mean = mean_x D(x)``; ``D_var = population variance`` (ddof 0, what upstream computes under the
  name "fore max var"); ``D_std = sqrt(D_var)``. **kdlens' official dispersion is ``D_std``** (the
  paper's name); ``D_var`` is reported next to it for parity. Both order two runs the same way.
  With ``skip_first=True`` checkpoint 0 is excluded from the argmax (upstream does this for ResNets) and
  the index is mapped back correctly -- upstream forgets the offset, so each of its peaks points one
  checkpoint too early; kdlens does not copy that.
  ``slope = mean_x N(x, m) / WD(m)`` over the images whose WD(m) > 0 (upstream divides by zero when the
  peak is at checkpoint 0); the number of images left out is reported.
  The same numbers are computed for background concepts.
* **Stability** ``rho = mean_x |S_K(x)| / |union_k S_k(x)|``, S_k = concept cells of the region at
  checkpoint k, K the final checkpoint; an empty union contributes 0 (upstream) or is excluded, same flag
  as lambda. Reported for fg (the paper's rho), bg and all cells. It depends on the checkpoint grid.
* **Effective-sample filter** (optional, as in the upstream code): an image is dropped when, at any checkpoint at or
  after ``filter_min_epoch``, its mean foreground entropy is not below its mean background entropy
  (or either is undefined); ``filter_top_frac`` compares only the lowest fraction of each set
  (upstream's off-by-default ``Top10``). Images without a map (sigma_f = 0) at any checkpoint are always
  dropped (no metric exists for them) and counted separately. Upstream keeps the first 50 passing images
  of a random candidate list; kdlens keeps all passing images and reports the pass rate.

* **Uncertainty and verdicts** (kdlens; the paper reports point values): every criterion of the three
  hypotheses is a difference distilled - baseline with a percentile interval from a **paired bootstrap
  over images** (``bootstrap`` resamples, ``level``, ``bootstrap_seed``): each resample draws the same
  images for both runs, which saw the same images and the same noise, and recomputes every metric on
  them (the dataset-level background baseline included). A criterion **holds** when its interval lies on
  the expected side of zero, **does not hold** when it lies on the other side, and is **inconclusive**
  when it contains zero (or a value is undefined). A hypothesis holds when all its criteria hold, does
  not hold when one is decided against it (it is a conjunction), and is inconclusive otherwise. The same
  resamples give each run's N_fg at every checkpoint with its interval, the learning-speed reading the
  curves support without the peak. Peak ties go to the first checkpoint (above), so an image whose N_fg
  curve is flat (max - min <= ``flat_tol`` concepts) has its peak at checkpoint 0 and D(x) = WD(0) = 0
  whatever it learns: such images are counted (``flat_fg_images``), since they pull D_mean down.

The history snapshots of sigma are copies (upstream's alias bug lives in sigma
estimation; see ``explain.sigma``).
"""
from __future__ import annotations

import math

import numpy as np

from .params import KnowledgeParams

EMPTY_POLICIES = ("zero", "exclude")


# ---------------------------------------------------------------------------------------------------
# masks on the grid


def center_box(grid: int, frac: float = 1 / 6) -> np.ndarray:
    """[G, G] bool: rows and columns floor(G*frac) .. floor(G*(1-frac)) inclusive are foreground.

    The ILSVRC protocol of the paper's code (G=16: cells 2..13, 144 fg / 112 bg; G=8: cells 1..6,
    36 fg / 28 bg). A weak proxy on CIFAR, whose objects fill most of the frame.
    """
    lo = int(math.floor(grid * frac + 1e-9))
    hi = int(math.floor(grid * (1.0 - frac) + 1e-9))
    box = np.zeros((grid, grid), dtype=bool)
    box[lo:hi + 1, lo:hi + 1] = True
    return box


def downsample_masks(masks, grid: int, mode: str = "center") -> np.ndarray:
    """Pixel masks [N, H, W] (or [H, W]) -> [N, G, G] (or [G, G]) bool, foreground = value > 0.

    ``center``: nearest neighbour at each cell's centre (PIL's NEAREST; upstream's nearest
    downsampling); ``nearest``: torch's legacy nearest (each cell's top-left pixel); ``any``: a cell is
    foreground when any of its pixels is (for thin objects; not upstream's rule).
    """
    m = np.asarray(masks) > 0
    single = m.ndim == 2
    if single:
        m = m[None]
    _, h, w = m.shape
    if mode == "any":
        rows = (np.arange(h) * grid) // h
        cols = (np.arange(w) * grid) // w
        out = np.zeros((m.shape[0], grid, grid), dtype=bool)
        np.logical_or.at(out, (slice(None), rows[:, None], cols[None, :]), m)
    else:
        if mode == "center":
            ri = np.floor((np.arange(grid) + 0.5) * h / grid).astype(int)
            ci = np.floor((np.arange(grid) + 0.5) * w / grid).astype(int)
        elif mode == "nearest":
            ri = np.floor(np.arange(grid) * h / grid).astype(int)
            ci = np.floor(np.arange(grid) * w / grid).astype(int)
        else:
            raise ValueError(f"unknown mask downsampling mode {mode!r}")
        out = m[:, np.minimum(ri, h - 1)][:, :, np.minimum(ci, w - 1)]
    return out[0] if single else out


def _fg(fg, n: int, grid: int) -> np.ndarray:
    fg = np.asarray(fg, dtype=bool)
    if fg.shape == (grid, grid):
        fg = np.broadcast_to(fg, (n, grid, grid))
    if fg.shape != (n, grid, grid):
        raise ValueError(f"foreground masks must be [N, G, G] or [G, G], got {fg.shape}")
    return fg


def _entropy(entropy) -> np.ndarray:
    h = np.asarray(entropy, dtype=np.float64)
    if h.ndim == 3:  # one checkpoint
        h = h[:, None]
    if h.ndim != 4 or h.shape[-1] != h.shape[-2]:
        raise ValueError(f"entropy maps must be [N, K, G, G], got {h.shape}")
    return h


def _region_mean(h: np.ndarray, region: np.ndarray) -> np.ndarray:
    """[N, K, G, G] entropies, [N, G, G] region -> [N, K] mean over the region's cells (NaN if empty)."""
    r = region[:, None].astype(np.float64)
    cnt = r.sum(axis=(2, 3))
    tot = np.where(r > 0, h, 0.0).sum(axis=(2, 3))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(cnt > 0, tot / np.where(cnt > 0, cnt, 1), np.nan)


# ---------------------------------------------------------------------------------------------------
# per-checkpoint metrics


def background_baseline(entropy, fg, mode: str = "dataset") -> np.ndarray:
    """``dataset``: [K] mean over images of each image's mean background entropy (upstream);
    ``per_image``: [N, K] each image's own background mean."""
    h = _entropy(entropy)
    fg = _fg(fg, h.shape[0], h.shape[-1])
    per_image = _region_mean(h, ~fg)
    if mode == "per_image":
        return per_image
    if mode != "dataset":
        raise ValueError(f"unknown background baseline mode {mode!r}")
    with np.errstate(invalid="ignore"), _quiet():
        return np.nanmean(per_image, axis=0)


def concept_cells(entropy, hbg, b: float = 0.2) -> np.ndarray:
    """[N, K, G, G] bool: ``hbg - H > b``; ``hbg`` is [K] (dataset) or [N, K] (per image)."""
    h = _entropy(entropy)
    hbg = np.asarray(hbg, dtype=np.float64)
    hbg = hbg[None, :, None, None] if hbg.ndim == 1 else hbg[:, :, None, None]
    with np.errstate(invalid="ignore"):
        return (hbg - h) > b


def concept_counts(concepts, fg) -> tuple[np.ndarray, np.ndarray]:
    """(N_fg, N_bg), each [N, K]: concept cells inside / outside the foreground."""
    c = np.asarray(concepts, dtype=bool)
    fg = _fg(fg, c.shape[0], c.shape[-1])[:, None]
    return (c & fg).sum(axis=(2, 3)), (c & ~fg).sum(axis=(2, 3))


def ratio_per_image(n_fg, n_bg, empty: str = "zero") -> np.ndarray:
    """N_fg / (N_fg + N_bg) elementwise; no concept -> 0 (``zero``) or NaN (``exclude``)."""
    n_fg = np.asarray(n_fg, dtype=np.float64)
    tot = n_fg + np.asarray(n_bg, dtype=np.float64)
    fill = 0.0 if empty == "zero" else np.nan
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(tot > 0, n_fg / np.where(tot > 0, tot, 1.0), fill)


def discriminative_ratio(n_fg, n_bg, empty: str = "zero") -> np.ndarray:
    """lambda = E_x[N_fg / (N_fg + N_bg)] per checkpoint ([K]; a scalar for [N] inputs)."""
    if empty not in EMPTY_POLICIES:
        raise ValueError(f"empty must be one of {EMPTY_POLICIES}")
    with _quiet():
        return np.nanmean(ratio_per_image(n_fg, n_bg, empty), axis=0)


# ---------------------------------------------------------------------------------------------------
# learning dynamics (hypotheses 2 and 3)


def peak_index(counts, skip_first: bool = False) -> np.ndarray:
    """[N, K] concept counts -> [N] index of the FIRST checkpoint with the most concepts.

    ``skip_first`` ignores checkpoint 0 and returns indices into the full list (the offset upstream
    forgets for ResNets).
    """
    n = np.asarray(counts)
    if skip_first:
        if n.shape[1] < 2:
            raise ValueError("skip_first needs at least two checkpoints")
        return np.argmax(n[:, 1:], axis=1) + 1
    return np.argmax(n, axis=1)


def wd_at_epochs(weight_distance: dict, layer: str, epochs, form: str = "cumulative") -> np.ndarray:
    """The analysed layer's cumulative distance at the checkpoint epochs, from ``WeightDistance.as_dict()``
    (``form``: cumulative = per-iteration path, official; cumulative_per_epoch = the paper's form)."""
    layers = weight_distance["layers"]
    if layer not in layers:
        raise KeyError(f"no weight distance for layer {layer!r}; recorded: {', '.join(list(layers)[:8])}...")
    series = layers[layer][form]
    out = []
    for e in epochs:
        if not 0 <= int(e) < len(series):
            raise ValueError(f"checkpoint epoch {e} is outside the recorded weight distance (0..{len(series) - 1})")
        v = series[int(e)]
        out.append(np.nan if v is None else float(v))
    return np.asarray(out, dtype=np.float64)


def learning_dynamics(counts, wd, epochs=None, skip_first: bool = False) -> dict:
    """D_mean, D_var, D_std (official), slope over images, from [N, K] counts and [K] distances."""
    n = np.asarray(counts)
    wd = np.asarray(wd, dtype=np.float64)
    if n.shape[1] != len(wd):
        raise ValueError(f"{n.shape[1]} checkpoints of counts but {len(wd)} weight distances")
    if len(n) == 0:
        return {"D_mean": math.nan, "D_var": math.nan, "D_std": math.nan, "slope": math.nan,
                "slope_excluded": 0, "peak_index": [], "peak_epoch": [], "D": []}
    m = peak_index(n, skip_first)
    d = wd[m]
    var = float(np.var(d))  # population variance, ddof = 0 (upstream's np.var)
    peak_n = n[np.arange(len(n)), m].astype(np.float64)
    ok = d > 0
    slope = float(np.mean(peak_n[ok] / d[ok])) if ok.any() else math.nan
    return {
        "D_mean": float(np.mean(d)),
        "D_var": var,
        "D_std": math.sqrt(var),
        "slope": slope,
        "slope_excluded": int((~ok).sum()),
        "peak_index": m.tolist(),
        "peak_epoch": (np.asarray(epochs)[m].tolist() if epochs is not None else None),
        "D": d.tolist(),
    }


def stability(concepts, region, empty: str = "zero") -> float:
    """rho = mean_x |S_final| / |union_k S_k| within ``region`` ([N, G, G] bool)."""
    c = np.asarray(concepts, dtype=bool)
    region = _fg(region, c.shape[0], c.shape[-1])
    s = c & region[:, None]
    union = s.any(axis=1).sum(axis=(1, 2)).astype(np.float64)
    final = s[:, -1].sum(axis=(1, 2)).astype(np.float64)
    fill = 0.0 if empty == "zero" else np.nan
    with np.errstate(invalid="ignore", divide="ignore"):
        rho = np.where(union > 0, final / np.where(union > 0, union, 1.0), fill)
    if len(rho) == 0:
        return math.nan
    with _quiet():
        return float(np.nanmean(rho))


def effect_filter(entropy, fg, epochs, min_epoch: int | None = None, top_frac: float | None = None) -> np.ndarray:
    """[N] bool: images whose foreground is less entropic (more used) than their background at every
    checkpoint epoch >= ``min_epoch`` (None: 40/150 of the final epoch, upstream's proportion)."""
    h = _entropy(entropy)
    fg = _fg(fg, h.shape[0], h.shape[-1])
    epochs = np.asarray(epochs)
    if min_epoch is None:
        min_epoch = int(math.ceil(epochs[-1] * 40 / 150))
    late = epochs >= min_epoch
    if top_frac is None:
        mf, mb = _region_mean(h, fg), _region_mean(h, ~fg)
    else:
        mf, mb = _lowest_mean(h, fg, top_frac), _lowest_mean(h, ~fg, top_frac)
    with np.errstate(invalid="ignore"):
        ok = mf < mb  # NaN compares False: rejected, as upstream
    return ok[:, late].all(axis=1)


def _lowest_mean(h: np.ndarray, region: np.ndarray, frac: float) -> np.ndarray:
    n, k = h.shape[:2]
    out = np.full((n, k), np.nan)
    for i in range(n):
        cells = h[i][:, region[i]]  # [K, n_cells]
        if cells.shape[1] == 0:
            continue
        m = max(1, int(math.ceil(frac * cells.shape[1])))
        out[i] = np.sort(cells, axis=1)[:, :m].mean(axis=1)
    return out


def has_maps(entropy) -> np.ndarray:
    """[N] bool: the image has a finite map at every checkpoint (sigma_f > 0 everywhere)."""
    h = _entropy(entropy)
    return np.isfinite(h).all(axis=(1, 2, 3))


# ---------------------------------------------------------------------------------------------------
# one run, two runs, hypotheses


def run_metrics(entropy, fg, epochs, wd, params: KnowledgeParams | None = None, keep=None) -> dict:
    """Every metric of one network run on the images selected by ``keep`` ([N] bool; None = all with
    maps). Scalars are at the final checkpoint; ``series`` holds the per-checkpoint curves."""
    p = params or KnowledgeParams()
    h = _entropy(entropy)
    n_all, k = h.shape[:2]
    fg = _fg(fg, n_all, h.shape[-1])
    if len(epochs) != k:
        raise ValueError(f"{k} checkpoints of maps but {len(epochs)} epochs")
    keep = has_maps(h) if keep is None else (np.asarray(keep, dtype=bool) & has_maps(h))
    h, fg = h[keep], fg[keep]
    hbg = background_baseline(h, fg, p.background)
    concepts = concept_cells(h, hbg, p.b)
    n_fg, n_bg = concept_counts(concepts, fg)
    ratio = ratio_per_image(n_fg, n_bg, p.empty)
    with _quiet():
        lam = np.nanmean(ratio, axis=0) if len(ratio) else np.full(k, np.nan)
        mean_fg = n_fg.mean(axis=0) if len(n_fg) else np.full(k, np.nan)
        mean_bg = n_bg.mean(axis=0) if len(n_bg) else np.full(k, np.nan)
    flat = int((n_fg.max(axis=1) - n_fg.min(axis=1) <= p.flat_tol).sum()) if len(n_fg) else 0
    dyn_fg = learning_dynamics(n_fg, wd, epochs, p.skip_first)
    dyn_bg = learning_dynamics(n_bg, wd, epochs, p.skip_first)
    everywhere = np.ones_like(fg)
    return {
        "n_images": int(keep.sum()),
        "image_index": np.flatnonzero(keep).tolist(),
        "epochs": [int(e) for e in epochs],
        "N_fg": float(mean_fg[-1]),
        "N_bg": float(mean_bg[-1]),
        "lambda_ratio": float(lam[-1]),
        "D_mean": dyn_fg["D_mean"], "D_std": dyn_fg["D_std"], "D_var": dyn_fg["D_var"],
        "slope": dyn_fg["slope"], "slope_excluded": dyn_fg["slope_excluded"],
        "D_mean_bg": dyn_bg["D_mean"], "D_std_bg": dyn_bg["D_std"], "D_var_bg": dyn_bg["D_var"],
        "slope_bg": dyn_bg["slope"],
        "rho": stability(concepts, fg, p.empty),
        "rho_bg": stability(concepts, ~fg, p.empty),
        "rho_all": stability(concepts, everywhere, p.empty),
        "peak_epoch": dyn_fg["peak_epoch"],
        "flat_fg_images": flat,
        "series": {
            "Hbg": np.asarray(hbg if hbg.ndim == 1 else np.nanmean(hbg, axis=0)).tolist(),
            "N_fg": mean_fg.tolist(), "N_bg": mean_bg.tolist(), "lambda_ratio": np.asarray(lam).tolist(),
            "wd": np.asarray(wd, dtype=np.float64).tolist(),
        },
        "per_image": {"N_fg": n_fg.tolist(), "N_bg": n_bg.tolist(), "D": dyn_fg["D"]},
        "params": p.model_dump(exclude={"center_box_frac"}),  # the knobs of these metrics (the box is the report's)
        "official": {"D_dispersion": "D_std (population std, ddof 0); D_var = upstream's 'fore max var'",
                     "weight_distance": "cumulative per-iteration path / ||W0||"},
    }


def compare(distilled: dict, baseline: dict, fg, epochs, params: KnowledgeParams | None = None) -> dict:
    """Metrics of the distilled and the baseline run on a common image set, plus the hypotheses.

    Each run is ``{"entropy": [N, K, G, G], "wd": [K]}`` over the same N images. Images without maps in
    a run are dropped; with ``params.effect_filter`` the filter is applied to each run and, with
    ``intersect_runs``, the runs are compared on the images valid in both. Returns ``{"distilled",
    "baseline", "hypotheses", "bootstrap", "selection"}``; when the filter is on, the unfiltered metrics
    are under ``"unfiltered"`` too.
    """
    p = params or KnowledgeParams()
    runs = {"distilled": distilled, "baseline": baseline}
    n = _entropy(distilled["entropy"]).shape[0]
    fg = _fg(fg, n, _entropy(distilled["entropy"]).shape[-1])
    valid = {r: has_maps(v["entropy"]) for r, v in runs.items()}
    passed = {r: effect_filter(v["entropy"], fg, epochs, p.filter_min_epoch, p.filter_top_frac) & valid[r]
              for r, v in runs.items()}
    selection = {
        "n_candidates": int(n),
        "n_with_maps": {r: int(v.sum()) for r, v in valid.items()},
        "filter_pass": {r: int(v.sum()) for r, v in passed.items()},
        "filter_pass_rate": {r: float(passed[r].sum() / max(valid[r].sum(), 1)) for r in runs},
    }

    def evaluate(masks: dict) -> dict:
        if p.intersect_runs:
            common = masks["distilled"] & masks["baseline"]
            masks = {r: common for r in runs}
        out = {r: run_metrics(runs[r]["entropy"], fg, epochs, runs[r]["wd"], p, masks[r]) for r in runs}
        boot = bootstrap(runs, fg, epochs, masks, p)
        out["hypotheses"] = hypotheses(out["distilled"], out["baseline"], boot["criteria"])
        out["bootstrap"] = boot
        return out

    result = evaluate(passed if p.effect_filter else valid)
    if p.effect_filter:
        result["unfiltered"] = evaluate(valid)
    result["selection"] = selection
    result["selection"]["n_compared"] = result["distilled"]["n_images"]
    return result


HYPOTHESES = {
    "H1": ("more foreground and fewer background visual concepts, higher lambda (discriminative ratio)",
           [("N_fg", "higher"), ("N_bg", "lower"), ("lambda_ratio", "higher")]),
    "H2": ("peak foreground knowledge reached with less weight movement, more simultaneously across images",
           [("D_mean", "lower"), ("D_std", "lower")]),
    "H3": ("more stable optimisation: fewer concepts learned and then discarded",
           [("rho", "higher")]),
}


# Fewer images than this leave the intervals undefined (every verdict inconclusive): one image resampled
# is always itself, a zero-width interval that would decide anything.
MIN_BOOTSTRAP_IMAGES = 2
CRITERIA = sorted({metric for _, checks in HYPOTHESES.values() for metric, _ in checks})
VERDICT_SCORE = {"holds": 1.0, "does not hold": -1.0, "inconclusive": 0.0}  # as MLflow metrics


def bootstrap(runs: dict, fg, epochs, masks: dict, params: KnowledgeParams) -> dict:
    """Percentile intervals over images, from ``params.bootstrap`` resamples: of each criterion's
    difference distilled - baseline, and of each run's mean N_fg at every checkpoint.

    ``runs``: ``{"distilled"|"baseline": {"entropy", "wd"}}``; ``masks``: the images each run is measured
    on. When both runs have the same images (``intersect_runs``) every resample draws the same images for
    both (paired); otherwise each run's images are drawn on their own. A percentile interval from a handful
    of images is too narrow (it undercovers); read it as a lower bound on the uncertainty."""
    p = params
    rng = np.random.default_rng(p.bootstrap_seed)
    h = {r: _entropy(runs[r]["entropy"]) for r in runs}
    fg = _fg(fg, h["distilled"].shape[0], h["distilled"].shape[-1])
    index = {r: np.flatnonzero(masks[r] & has_maps(h[r])) for r in runs}
    paired = np.array_equal(index["distilled"], index["baseline"])
    diffs = np.full((p.bootstrap, len(CRITERIA)), np.nan)
    curves = {r: np.full((p.bootstrap, len(epochs)), np.nan) for r in runs}
    if all(len(i) >= MIN_BOOTSTRAP_IMAGES for i in index.values()):
        for b in range(p.bootstrap):
            picks = {r: rng.integers(0, len(index[r]), len(index[r])) for r in runs}
            if paired:
                picks["baseline"] = picks["distilled"]
            out = {}
            for r in runs:
                chosen = index[r][picks[r]]
                out[r] = run_metrics(h[r][chosen], fg[chosen], epochs, runs[r]["wd"], p)
                curves[r][b] = out[r]["series"]["N_fg"]
            diffs[b] = [out["distilled"][m] - out["baseline"][m] for m in CRITERIA]
    q = [50 * (1 - p.level), 50 * (1 + p.level)]
    with _quiet():  # all-NaN columns (too few images, an undefined metric) give NaN bounds
        low, high = np.nanpercentile(diffs, q, axis=0)
        bands = {r: np.nanpercentile(c, q, axis=0).T.tolist() for r, c in curves.items()}
    return {
        "resamples": p.bootstrap, "level": p.level, "paired": bool(paired), "seed": p.bootstrap_seed,
        "criteria": {m: {"low": float(lo), "high": float(hi)} for m, lo, hi in zip(CRITERIA, low, high)},
        "N_fg_interval": bands,
    }


def criterion_verdict(difference: float, low: float, high: float, expect: str) -> str:
    """holds / does not hold / inconclusive: whether the interval of the difference (distilled - baseline)
    lies on the expected side of zero, on the other side, or contains it (or is undefined)."""
    if not all(math.isfinite(v) for v in (difference, low, high)) or low <= 0 <= high:
        return "inconclusive"
    return "holds" if (low > 0) == (expect == "higher") else "does not hold"


def hypothesis_verdict(verdicts: list[str]) -> str:
    """A conjunction: holds when every criterion holds, does not hold when one is decided against it."""
    if "does not hold" in verdicts:
        return "does not hold"
    return "holds" if all(v == "holds" for v in verdicts) else "inconclusive"


def hypotheses(distilled: dict, baseline: dict, intervals: dict) -> dict:
    """The paper's three hypotheses for distilled vs baseline, each criterion decided by its interval
    (``bootstrap(...)["criteria"]``).

    Returns ``{"H1": {"claim", "verdict", "checks": [{"metric", "expect", "distilled", "baseline",
    "difference", "low", "high", "verdict"}]}, ...}``.
    """
    out = {}
    for key, (claim, checks) in HYPOTHESES.items():
        rows = []
        for metric, expect in checks:
            d, b = float(distilled[metric]), float(baseline[metric])
            low, high = intervals[metric]["low"], intervals[metric]["high"]
            rows.append({"metric": metric, "expect": expect, "distilled": d, "baseline": b, "difference": d - b,
                         "low": low, "high": high, "verdict": criterion_verdict(d - b, low, high, expect)})
        out[key] = {"claim": claim, "verdict": hypothesis_verdict([r["verdict"] for r in rows]), "checks": rows}
    return out


class _quiet:
    """Silence numpy's 'mean of empty slice' warnings (the NaN result is the answer)."""

    def __enter__(self):
        import warnings
        self._ctx = warnings.catch_warnings()
        self._ctx.__enter__()
        warnings.simplefilter("ignore", category=RuntimeWarning)

    def __exit__(self, *exc):
        return self._ctx.__exit__(*exc)


def select_images(split, n: int) -> np.ndarray:
    """Sorted indices of n test images: first those whose mask has a foreground pixel, then (when too few)
    those without a mask, whose foreground the report takes from the centre-box prior."""
    masked = split.masked
    with_fg = masked if split.masks is None else masked & split.masks.reshape(len(masked), -1).any(axis=1)
    return np.sort(np.concatenate([np.flatnonzero(with_fg), np.flatnonzero(~masked)])[:n])
