"""The embedded default dataset ``scenes``: one handwritten digit over clutter, with its exact mask.

Built offline from scikit-learn's bundled handwritten digits (1797 8x8 images, no download). Each
scene is an RGB image holding ONE digit (its label), scaled up bilinearly, placed at a random position
and drawn in a random bright colour over

* a smooth random colour background (a coarse random grid upsampled bilinearly),
* ``fragments`` crops of OTHER source digits, scaled and blended at an opacity set by ``clutter``
  (near 1 they are nearly as strong as the digit itself),
* per-pixel Gaussian noise of std ``noise`` (in units of the full 0..1 intensity range).

The mask marks the pixels where the label digit's scaled intensity exceeds ``MASK_THRESHOLD``.

Train and test are split by SOURCE digit: a seeded, class-stratified split of the 1797 handwriting
samples, so no sample appears in both splits, and every scene (digit and fragments) draws only from
its own split's samples. Randomness comes only from numpy Generators seeded from ``p.seed``, with
one independent stream each for the source split, the train scenes and the test scenes (so changing
``n_train`` leaves the test scenes unchanged).
"""
from __future__ import annotations

import hashlib
from functools import lru_cache

import numpy as np

from dataset.params import ScenesParams
from .store import Split

NAME = "scenes"
CLASSES = [str(d) for d in range(10)]
GLYPH = 8  # side of a source digit in pixels
MASK_THRESHOLD = 0.2  # scaled digit intensity (0..1) above which a pixel is foreground
FRAGMENT_SIDE = (3, 6)  # crop side in source pixels: at most 6 of 8, so a fragment is never a whole digit
FRAGMENT_STRENGTH = (0.6, 1.0)  # per-fragment opacity range, multiplied by clutter
BACKGROUND_LEVEL = (0.05, 0.45)  # background base intensity: dark enough for bright digits to stand out
BACKGROUND_TEXTURE = 0.12  # std of the coarse background grid around its base colour
_CHUNK = 512  # images rendered at once: bounds memory for large image_size (changing it changes the bytes)

# Independent generator streams, keyed by purpose (see module docstring).
_STREAM_SPLIT, _STREAM_TRAIN, _STREAM_TEST = 0, 1, 2


@lru_cache(maxsize=1)
def source_digits() -> tuple[np.ndarray, np.ndarray]:
    """The 1797 source digits as float32 [N, 8, 8] in 0..1 and their int64 labels (read-only)."""
    from sklearn.datasets import load_digits

    d = load_digits()
    glyphs = (d.images / 16.0).astype(np.float32)
    labels = d.target.astype(np.int64)
    glyphs.flags.writeable = False
    labels.flags.writeable = False
    return glyphs, labels


def split_sources(p: ScenesParams) -> tuple[np.ndarray, np.ndarray]:
    """Sorted indices (into ``source_digits()``) of the train and test handwriting samples.

    Class-stratified: in every class ``round(test_fraction * count)`` samples go to test, and each
    split keeps at least one sample of every class.
    """
    _, labels = source_digits()
    rng = np.random.default_rng([_STREAM_SPLIT, p.seed])
    train, test = [], []
    for c in range(len(CLASSES)):
        idx = rng.permutation(np.flatnonzero(labels == c))
        k = min(max(int(round(p.test_fraction * len(idx))), 1), len(idx) - 1)
        test.append(idx[:k])
        train.append(idx[k:])
    return np.sort(np.concatenate(train)), np.sort(np.concatenate(test))


def _bright_colours(rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
    """Random RGB colours [*shape, 3] whose brightest channel is at least 0.84."""
    c = rng.random((*shape, 3)) ** 2  # squaring favours saturated colours over greys
    c = c / np.maximum(c.max(-1, keepdims=True), 1e-6) * rng.uniform(0.8, 1.0, (*shape, 1))
    return (0.2 + 0.8 * c).astype(np.float32)


def _axis_weights(out_len: int, top, size, win_start, win_len) -> np.ndarray:
    """Bilinear resampling weights [..., out_len, GLYPH] for one image axis.

    Source pixels ``[win_start, win_start + win_len)`` are stretched over output pixels
    ``[top, top + size)``; rows outside that output range get zero weight, so a full glyph and a
    crop of one are drawn the same way. All arguments broadcast together.
    """
    top, size, ws, wl = (np.asarray(a, np.float32)[..., None] for a in (top, size, win_start, win_len))
    pos = np.arange(out_len, dtype=np.float32)
    s = ws + (pos + 0.5 - top) * (wl / size) - 0.5  # pixel-centre aligned, as in align_corners=False
    s = np.clip(s, ws, ws + wl - 1)  # clamp to the window so a crop never bleeds in its surroundings
    i0 = np.floor(s)
    f = (s - i0)[..., None]
    i0 = i0.astype(np.int64)[..., None]
    src = np.arange(GLYPH)
    w = (1 - f) * (src == i0) + f * (src == i0 + 1)
    inside = (pos >= top) & (pos < top + size)
    return (w * inside[..., None]).astype(np.float32)


def _stamp(glyphs: np.ndarray, wy: np.ndarray, wx: np.ndarray) -> np.ndarray:
    """Resample glyphs [..., 8, 8] through axis weights into intensities [..., H, W] in 0..1."""
    # Two separable passes (columns, then rows); einsum's own loops (no BLAS) keep the bytes
    # independent of threading.
    cols = np.einsum("...ij,...xj->...ix", glyphs, wx, optimize=False)
    return np.einsum("...yi,...ix->...yx", wy, cols, optimize=False)


def _smooth_background(rng: np.random.Generator, n: int, size: int) -> np.ndarray:
    """Smooth random colour fields [n, 3, size, size]: a coarse random grid upsampled bilinearly."""
    g = max(2, size // 8) + 1
    base = rng.uniform(*BACKGROUND_LEVEL, (n, 3, 1, 1))
    grid = (base + rng.normal(0.0, BACKGROUND_TEXTURE, (n, 3, g, g))).astype(np.float32)
    # Interpolation matrix [size, g]: output pixel centres spread evenly over the grid's span.
    pos = (np.arange(size) + 0.5) / size * (g - 1)
    i0 = np.minimum(np.floor(pos).astype(np.int64), g - 2)
    f = (pos - i0).astype(np.float32)
    m = np.zeros((size, g), np.float32)
    m[np.arange(size), i0] = 1 - f
    m[np.arange(size), i0 + 1] = f
    cols = np.einsum("ncij,xj->ncix", grid, m, optimize=False)
    return np.clip(np.einsum("yi,ncix->ncyx", m, cols, optimize=False), 0.0, 1.0)


def _render(p: ScenesParams, pool: np.ndarray, n: int, rng: np.random.Generator):
    """Draw ``n`` scenes whose digits and fragments all come from the source indices ``pool``.

    Returns the Split, the source index of each scene's digit [n] and of its fragments [n, F].
    """
    glyphs, glyph_labels = source_digits()
    size, nf = p.image_size, p.fragments
    lo, hi = p.digit_size

    # Per-image choices are drawn up front; only the per-pixel fields (background, noise) are drawn
    # chunk by chunk, in order and with a fixed chunk size, so the bytes depend on the params alone.
    labels = rng.permutation(np.arange(n) % len(CLASSES)).astype(np.int64)  # balanced classes
    by_class = [pool[glyph_labels[pool] == c] for c in range(len(CLASSES))]
    counts = np.array([len(b) for b in by_class])
    table = np.zeros((len(CLASSES), counts.max()), np.int64)
    for c, b in enumerate(by_class):
        table[c, : len(b)] = b
    src = table[labels, (rng.random(n) * counts[labels]).astype(np.int64)]
    d_size = rng.integers(lo, hi + 1, n)
    d_top = rng.integers(0, size - d_size + 1, (2, n))  # the whole digit lies inside the image
    d_col = _bright_colours(rng, (n,))

    k = rng.integers(0, len(pool), (n, nf))
    f_src = pool[k]
    same = f_src == src[:, None]  # a fragment must come from another sample than the digit
    f_src[same] = pool[(k[same] + 1) % len(pool)]
    f_win = rng.integers(FRAGMENT_SIDE[0], FRAGMENT_SIDE[1] + 1, (2, n, nf))
    f_start = rng.integers(0, GLYPH - f_win + 1)
    f_scale = rng.uniform(lo, hi, (n, nf)) / GLYPH  # the same magnification range as the digits
    f_size = np.maximum(np.rint(f_win * f_scale), 1).astype(np.int64)
    f_top = rng.integers(-(f_size // 2), size - f_size // 2 + 1)  # may overhang the border
    f_alpha = (p.clutter * rng.uniform(*FRAGMENT_STRENGTH, (n, nf))).astype(np.float32)
    f_col = _bright_colours(rng, (n, nf))

    images = np.empty((n, 3, size, size), np.uint8)
    masks = np.empty((n, size, size), np.uint8)
    for a in range(0, n, _CHUNK):
        b = min(a + _CHUNK, n)
        img = _smooth_background(rng, b - a, size)
        if nf:
            wy = _axis_weights(size, f_top[0, a:b], f_size[0, a:b], f_start[0, a:b], f_win[0, a:b])
            wx = _axis_weights(size, f_top[1, a:b], f_size[1, a:b], f_start[1, a:b], f_win[1, a:b])
            frag = _stamp(glyphs[f_src[a:b]], wy, wx) * f_alpha[a:b, :, None, None]
            for j in range(nf):
                alpha = frag[:, j, None]
                img += alpha * (f_col[a:b, j, :, None, None] - img)
        wy = _axis_weights(size, d_top[0, a:b], d_size[a:b], 0, GLYPH)
        wx = _axis_weights(size, d_top[1, a:b], d_size[a:b], 0, GLYPH)
        digit = _stamp(glyphs[src[a:b]], wy, wx)
        img += digit[:, None] * (d_col[a:b, :, None, None] - img)
        if p.noise > 0:
            img += p.noise * rng.standard_normal(img.shape, dtype=np.float32)
        images[a:b] = np.rint(np.clip(img, 0.0, 1.0) * 255.0).astype(np.uint8)
        masks[a:b] = digit > MASK_THRESHOLD
    return Split(images=images, labels=labels, masks=masks), src, f_src


def _digest(idx: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(idx, dtype="<i8").tobytes()).hexdigest()[:16]


def build_scenes_with_sources(p: ScenesParams):
    """``build_scenes`` plus the provenance of every scene.

    Returns ``(train, test, classes, info, sources)`` where ``sources`` maps ``"train"``/``"test"``
    to the split's handwriting samples (indices into ``source_digits()``), and
    ``"train_digit"``/``"test_digit"`` [N] and ``"train_fragments"``/``"test_fragments"`` [N, F] to
    the sample each scene's digit and fragments were drawn from.
    """
    _, glyph_labels = source_digits()
    train_pool, test_pool = split_sources(p)
    train, train_src, train_frag = _render(p, train_pool, p.n_train, np.random.default_rng([_STREAM_TRAIN, p.seed]))
    test, test_src, test_frag = _render(p, test_pool, p.n_test, np.random.default_rng([_STREAM_TEST, p.seed]))
    info = {
        "dataset": NAME,
        "source": "sklearn.datasets.load_digits (8x8 handwritten digits)",
        "source_digits": {
            "train": int(len(train_pool)),
            "test": int(len(test_pool)),
            "train_per_class": np.bincount(glyph_labels[train_pool], minlength=len(CLASSES)).tolist(),
            "test_per_class": np.bincount(glyph_labels[test_pool], minlength=len(CLASSES)).tolist(),
            # A short fingerprint of which samples went where, instead of listing ~1800 indices.
            "train_sha256": _digest(train_pool),
            "test_sha256": _digest(test_pool),
        },
        "mask_threshold": MASK_THRESHOLD,
        "params": p.model_dump(mode="json"),
    }
    sources = {
        "train": train_pool,
        "test": test_pool,
        "train_digit": train_src,
        "test_digit": test_src,
        "train_fragments": train_frag,
        "test_fragments": test_frag,
    }
    return train, test, list(CLASSES), info, sources


def build_scenes(p: ScenesParams) -> tuple[Split, Split, list[str], dict]:
    """The ``scenes`` dataset: ``(train, test, classes, info)``; same params give the same bytes."""
    return build_scenes_with_sources(p)[:4]
