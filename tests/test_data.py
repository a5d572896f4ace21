"""The data layer: the embedded ``scenes`` dataset, CIFAR loading, prepare() and the on-disk format."""
from __future__ import annotations

import hashlib
import json
import pickle
from pathlib import Path

import numpy as np
import pytest

from dataset import BUILDERS, load_prepared, prepare
from dataset.cifar import load_cifar
from dataset.scenes import (
    MASK_THRESHOLD,
    _axis_weights,
    _stamp,
    build_scenes,
    build_scenes_with_sources,
    source_digits,
)
from core.errors import KdlensError
from dataset.params import DataParams, ScenesParams

SMALL = dict(n_train=200, n_test=100)


@pytest.fixture(scope="module")
def built():
    """One small default-params build with provenance, shared by the read-only tests."""
    return build_scenes_with_sources(ScenesParams(**SMALL))


# ---------------------------------------------------------------------------------------- scenes


def test_scenes_deterministic_and_seeded():
    a = build_scenes(ScenesParams(**SMALL))
    b = build_scenes(ScenesParams(**SMALL))
    c = build_scenes(ScenesParams(**SMALL, seed=1))
    for split_a, split_b, split_c in zip(a[:2], b[:2], c[:2]):
        assert split_a.images.tobytes() == split_b.images.tobytes()
        assert split_a.labels.tobytes() == split_b.labels.tobytes()
        assert split_a.masks.tobytes() == split_b.masks.tobytes()
        assert split_a.images.tobytes() != split_c.images.tobytes()
    assert a[3] == b[3]


def test_scenes_test_split_independent_of_n_train():
    # The test scenes have their own generator stream: growing the training set leaves them unchanged.
    a = build_scenes(ScenesParams(**SMALL))[1]
    b = build_scenes(ScenesParams(n_train=300, n_test=SMALL["n_test"]))[1]
    assert a.images.tobytes() == b.images.tobytes()


def test_scenes_shapes_and_dtypes(built):
    train, test, classes, info, _ = built
    assert classes == [str(d) for d in range(10)]
    for split, n in ((train, SMALL["n_train"]), (test, SMALL["n_test"])):
        assert split.images.dtype == np.uint8 and split.images.shape == (n, 3, 32, 32)
        assert split.labels.dtype == np.int64 and split.labels.shape == (n,)
        assert split.masks.dtype == np.uint8 and split.masks.shape == (n, 32, 32)
        assert set(np.unique(split.masks)) <= {0, 1}
        assert split.labels.min() >= 0 and split.labels.max() <= 9
    assert info["dataset"] == "scenes"
    assert info["params"]["n_train"] == SMALL["n_train"]
    json.dumps(info)  # goes into card.json

    big = build_scenes(ScenesParams(n_train=20, n_test=10, image_size=48, digit_size=(20, 30)))[0]
    assert big.images.shape == (20, 3, 48, 48) and big.masks.shape == (20, 48, 48)


def test_scenes_labels_balanced(built):
    for split in built[:2]:
        counts = np.bincount(split.labels, minlength=10)
        assert counts.max() - counts.min() <= 1


def test_scenes_masks_mark_the_digit(built):
    p = ScenesParams(**SMALL)
    lo, hi = p.digit_size
    for split in built[:2]:
        area = split.masks.sum(axis=(1, 2))
        assert (area > 0).all()
        # The mask is the scaled glyph: its bounding box fits in the largest digit size.
        rows, cols = split.masks.any(axis=2), split.masks.any(axis=1)
        for r, c in zip(rows, cols):
            assert np.ptp(np.flatnonzero(r)) < hi and np.ptp(np.flatnonzero(c)) < hi
        # The digit is drawn bright over a dark-ish background: masked pixels are brighter.
        bright = split.images.max(axis=1).astype(np.float64)
        fg = (bright * split.masks).sum((1, 2)) / area
        bg = (bright * (1 - split.masks)).sum((1, 2)) / (1 - split.masks).sum((1, 2))
        assert (fg > bg).mean() > 0.95
        assert (fg - bg).mean() > 40


def test_scenes_masks_without_clutter():
    # With no fragments and no noise, only the background and the digit are drawn: the masked pixels
    # (>= 20% of the way to a bright digit colour) are brighter than the rest in nearly every image.
    train = build_scenes(ScenesParams(**SMALL, fragments=0, noise=0.0))[0]
    bright = train.images.max(axis=1).astype(np.float64)
    m = train.masks.astype(bool)
    contrast = np.array([b[mk].mean() - b[~mk].mean() for b, mk in zip(bright, m)])
    assert (contrast > 0).mean() > 0.98 and contrast.mean() > 50


def test_renderer_draws_into_the_box():
    # The renderer behind digits, fragments and masks: a glyph stretched over [top, top+size) on each
    # axis lands exactly there, and a crop of it only shows inside its own box.
    glyph = np.zeros((1, 8, 8), np.float32)
    glyph[0, 2:6, 3:5] = 1.0  # a bar: rows 2..5, cols 3..4 of the source
    wy = _axis_weights(32, [10], [16], 0, 8)
    wx = _axis_weights(32, [4], [16], 0, 8)
    out = _stamp(glyph, wy, wx)[0]
    assert out.shape == (32, 32) and out.min() >= 0 and out.max() <= 1 + 1e-6
    ys, xs = np.nonzero(out > MASK_THRESHOLD)
    # Scale 2: source rows 2..5 -> output rows 10 + [4, 12), source cols 3..4 -> 4 + [6, 10).
    assert 13 <= ys.min() <= 14 and 21 <= ys.max() <= 22
    assert 9 <= xs.min() <= 10 and 13 <= xs.max() <= 14
    assert out[:10].max() == 0 and out[26:].max() == 0 and out[:, :4].max() == 0 and out[:, 20:].max() == 0
    # A crop of source rows 4..7 (the bar's lower half) drawn over rows [0, 8) fills only that box.
    crop = _stamp(glyph, _axis_weights(32, [0], [8], 4, 4), _axis_weights(32, [0], [16], 0, 8))[0]
    assert crop[8:].max() == 0 and crop[:3].max() > 0.9


def test_scenes_split_by_source_digit(built):
    train, test, _, info, src = built
    _, glyph_labels = source_digits()
    p = ScenesParams(**SMALL)
    assert not set(src["train"]) & set(src["test"])
    assert len(src["train"]) + len(src["test"]) == len(glyph_labels) == 1797
    assert abs(len(src["test"]) / 1797 - p.test_fraction) < 0.01
    assert info["source_digits"]["train"] == len(src["train"])
    assert info["source_digits"]["test"] == len(src["test"])
    # Stratified: every class is in both splits, in about the test fraction.
    per_class_test = np.bincount(glyph_labels[src["test"]], minlength=10)
    per_class_all = np.bincount(glyph_labels, minlength=10)
    assert np.allclose(per_class_test / per_class_all, p.test_fraction, atol=0.02)
    for name, split in (("train", train), ("test", test)):
        pool = set(src[name])
        assert set(src[f"{name}_digit"]) <= pool
        assert set(src[f"{name}_fragments"].ravel()) <= pool
        # Each scene's digit is a sample of its label; fragments come from other samples.
        assert (glyph_labels[src[f"{name}_digit"]] == split.labels).all()
        assert (src[f"{name}_fragments"] != src[f"{name}_digit"][:, None]).all()


def test_scenes_clutter_changes_images():
    calm = build_scenes(ScenesParams(**SMALL, clutter=0.0, noise=0.0))[0]
    busy = build_scenes(ScenesParams(**SMALL, clutter=1.0, noise=0.0))[0]
    # Clutter only sets fragment opacity: the digits, labels and masks are the same draws.
    assert (calm.labels == busy.labels).all() and (calm.masks == busy.masks).all()
    diff = np.abs(calm.images.astype(np.int16) - busy.images.astype(np.int16))
    assert diff.mean() > 5
    # Fragments add structure off the digit: the background gets rougher.
    off = ~busy.masks.astype(bool)[:, None].repeat(3, axis=1)
    rough = lambda x: np.abs(np.diff(x.astype(np.float64), axis=3))[off[..., 1:]].mean()  # noqa: E731
    assert rough(busy.images) > rough(calm.images) * 1.5


def test_scenes_noise_param():
    clean = build_scenes(ScenesParams(**SMALL, noise=0.0))[0]
    noisy = build_scenes(ScenesParams(**SMALL, noise=0.3))[0]
    d = noisy.images.astype(np.float64) - clean.images.astype(np.float64)
    assert 40 < d.std() < 90  # 0.3 * 255 = 76, less where clipping bites


def test_scenes_params_validation():
    from pydantic import ValidationError

    with pytest.raises(ValidationError):
        ScenesParams(seed=-1)
    with pytest.raises(ValidationError):
        DataParams(scenes=ScenesParams(image_size=16, digit_size=(12, 20)))


# ---------------------------------------------------------------------------- prepare / store


def test_registry_covers_every_dataset_name():
    # Every name is built in memory by a builder, or streamed from disk by default (only imagenet).
    names = set(DataParams.model_fields["name"].annotation.__args__)
    streamed = {n for n in names if DataParams(name=n).streams}
    assert streamed == {"imagenet"} and set(BUILDERS) == names - streamed


def test_prepare_round_trip(tmp_path):
    p = DataParams(scenes=ScenesParams(n_train=100, n_test=50))
    out = tmp_path / "prepared"
    card = prepare(p, out)
    assert json.loads((out / "card.json").read_text()) == card
    assert card["classes"] == [str(d) for d in range(10)] and card["num_classes"] == 10
    assert card["counts"]["train"] == 100 and card["counts"]["test"] == 50
    assert sum(card["counts"]["train_per_class"]) == 100 and sum(card["counts"]["test_per_class"]) == 50
    assert card["image_shape"] == [3, 32, 32] and card["has_masks"] is True
    assert card["dataset"] == "scenes" and card["source_digits"]["train"] + card["source_digits"]["test"] == 1797
    assert len(card["mean"]) == 3 and len(card["std"]) == 3
    assert all(0 < m < 1 for m in card["mean"]) and all(0 < s < 1 for s in card["std"])
    # The checksum covers the .npy files in the order written: per split images, labels, masks.
    digest = hashlib.sha256()
    for split in ("train", "test"):
        for key in ("images", "labels", "masks"):
            digest.update((out / f"{split}_{key}.npy").read_bytes())
    assert card["sha256"] == digest.hexdigest()

    prepared = load_prepared(out)
    train, test, _, _ = build_scenes(p.scenes)
    for got, want in ((prepared.train, train), (prepared.test, test)):
        assert (got.images == want.images).all()
        assert (got.labels == want.labels).all()
        assert (got.masks == want.masks).all()
    assert prepared.num_classes == 10
    # Preparing again gives the same bytes.
    assert prepare(p, tmp_path / "again")["sha256"] == card["sha256"]


@pytest.fixture
def prepared_dir(tmp_path):
    out = tmp_path / "prepared"
    prepare(DataParams(scenes=ScenesParams(n_train=20, n_test=10)), out)
    return out


def test_corrupt_npy_names_the_file(prepared_dir):
    bad = prepared_dir / "train_images.npy"
    bad.write_bytes(b"not a numpy file")
    with pytest.raises(KdlensError, match="train_images.npy") as e:
        load_prepared(prepared_dir)
    assert "\n" not in str(e.value)


def test_missing_npy_names_the_file(prepared_dir):
    (prepared_dir / "test_masks.npy").unlink()
    with pytest.raises(KdlensError, match="test_masks.npy: missing"):
        load_prepared(prepared_dir)


def test_missing_card(tmp_path):
    with pytest.raises(KdlensError, match="card.json"):
        load_prepared(tmp_path)


# ------------------------------------------------------------------------------------------ CIFAR

TINY_TRAIN_PER_BATCH, TINY_TEST = 4, 6
CIFAR10_NAMES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


def _tiny_batch(rng, n):
    # Channel c of image i is filled with 10*c + i, so the NCHW conversion can be checked exactly.
    data = np.zeros((n, 3, 32, 32), np.uint8)
    for i in range(n):
        for c in range(3):
            data[i, c] = 10 * c + i
    data[:, :, 0, 0] = rng.integers(0, 256, (n, 3))  # make every batch's bytes distinct
    return {"data": data.reshape(n, 3072), "labels": rng.integers(0, 10, n).tolist()}


def _write_tiny_cifar10(root: Path) -> dict[str, str]:
    """A tiny CIFAR-10 in CIFAR's own on-disk layout; returns each file's MD5.

    The real files are Python 2 pickles that torchvision reads with ``encoding="latin1"``, which
    gives ``str`` keys; pickling dicts with ``str`` keys reproduces exactly what it sees.
    """
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    batches = {f"data_batch_{i}": _tiny_batch(rng, TINY_TRAIN_PER_BATCH) for i in range(1, 6)}
    batches["test_batch"] = _tiny_batch(rng, TINY_TEST)
    batches["batches.meta"] = {"label_names": CIFAR10_NAMES, "num_cases_per_batch": TINY_TRAIN_PER_BATCH}
    md5 = {}
    for name, obj in batches.items():
        (folder / name).write_bytes(pickle.dumps(obj, protocol=2))
        md5[name] = hashlib.md5((folder / name).read_bytes()).hexdigest()
    return md5


@pytest.fixture
def tiny_cifar10(tmp_path, monkeypatch):
    """A tiny CIFAR-10 root, with torchvision's expected MD5s (of the real files) swapped for the tiny
    files' own, in this test only: the integrity check itself still runs."""
    from torchvision.datasets import CIFAR10

    root = tmp_path / "downloads"
    md5 = _write_tiny_cifar10(root)
    monkeypatch.setattr(CIFAR10, "train_list", [[f"data_batch_{i}", md5[f"data_batch_{i}"]] for i in range(1, 6)])
    monkeypatch.setattr(CIFAR10, "test_list", [["test_batch", md5["test_batch"]]])
    monkeypatch.setattr(CIFAR10, "meta", {**CIFAR10.meta, "md5": md5["batches.meta"]})
    return root


def test_cifar_tiny_loads(tiny_cifar10):
    train, test, classes, info = load_cifar("cifar10", str(tiny_cifar10), download=False)
    assert classes == CIFAR10_NAMES
    assert train.images.shape == (5 * TINY_TRAIN_PER_BATCH, 3, 32, 32) and train.images.dtype == np.uint8
    assert test.images.shape == (TINY_TEST, 3, 32, 32)
    assert train.labels.dtype == np.int64 and train.masks is None and test.masks is None
    # Channel-first conversion: channel c of the i-th image of a batch holds 10*c + i.
    for i in range(TINY_TEST):
        for c in range(3):
            assert (test.images[i, c, 1:, :] == 10 * c + i).all()
    with open(tiny_cifar10 / "cifar-10-batches-py" / "test_batch", "rb") as f:
        assert test.labels.tolist() == pickle.load(f)["labels"]
    assert info["dataset"] == "cifar10"


def test_cifar_prepare(tiny_cifar10, tmp_path):
    card = prepare(DataParams(name="cifar10", root=str(tiny_cifar10)), tmp_path / "prepared")
    assert card["has_masks"] is False and card["counts"]["train"] == 5 * TINY_TRAIN_PER_BATCH
    assert card["classes"] == CIFAR10_NAMES
    prepared = load_prepared(tmp_path / "prepared")
    assert prepared.train.masks is None and prepared.test.images.shape == (TINY_TEST, 3, 32, 32)


def test_cifar_integrity_check_still_applies(tmp_path):
    # Without the patched checksums, the tiny files fail torchvision's MD5 check of the real ones.
    _write_tiny_cifar10(tmp_path)
    with pytest.raises(KdlensError, match="data.root: .*corrupt") as e:
        load_cifar("cifar10", str(tmp_path), download=False)
    assert "\n" not in str(e.value)


@pytest.mark.parametrize("name, folder", [("cifar10", "cifar-10-batches-py"), ("cifar100", "cifar-100-python")])
def test_cifar_missing_root(tmp_path, name, folder):
    root = tmp_path / "nowhere"
    with pytest.raises(KdlensError) as e:
        load_cifar(name, str(root), download=False)
    msg = str(e.value)
    assert "\n" not in msg
    assert msg.startswith("data.root:") and str(root) in msg
    assert "data.download: true" in msg and folder in msg


def test_cifar_download_failure_is_one_line(tmp_path, monkeypatch):
    import urllib.error

    import torchvision.datasets.cifar as tv_cifar

    def offline(*args, **kwargs):
        raise urllib.error.URLError("[Errno -3] Temporary failure\nin name resolution")

    monkeypatch.setattr(tv_cifar, "download_and_extract_archive", offline)
    with pytest.raises(KdlensError) as e:
        load_cifar("cifar10", str(tmp_path), download=True)
    msg = str(e.value)
    assert "\n" not in msg and msg.startswith("data.root:") and "URLError" in msg and str(tmp_path) in msg
