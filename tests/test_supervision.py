"""methods/letkd/supervision.py: faiss k-means, LDA sub-class targets, the decision matrix, the file format."""
import json

import numpy as np
import pytest
import torch

import models
from methods.letkd import store
from methods.letkd import supervision as sup
from dataset.store import Prepared, Split
from core.errors import KdlensError
from core.files import sha256_file
from methods.letkd.params import SupervisionParams


def _blobs(rng, centres, n_per, scale):
    x = np.concatenate([c + scale * rng.standard_normal((n_per, len(c))) for c in centres]).astype(np.float32)
    return x, np.repeat(np.arange(len(centres)), n_per)


def test_faiss_kmeans_recovers_known_clusters():
    rng = np.random.default_rng(0)
    centres = 10.0 * np.eye(5)[:4]  # four blobs 14 apart, spread 0.5
    x, truth = _blobs(rng, centres, 150, 0.5)
    res = sup.kmeans(x, 4, iterations=20, seed=0, n_init=4)
    assert res.device == ("faiss-gpu" if sup.faiss_use_gpu() else "faiss-cpu")
    # the partition is the true one: each true cluster maps to one label and the labels are all distinct
    mapping = {t: set(res.labels[truth == t]) for t in range(4)}
    assert all(len(v) == 1 for v in mapping.values()) and len(set.union(*mapping.values())) == 4, mapping
    # the centroids are the blob means, and the final inertia is the within-blob sum of squares
    for t in range(4):
        assert np.allclose(res.centroids[res.labels[truth == t][0]], x[truth == t].mean(0), atol=1e-4)
    within = sum(((x[truth == t] - x[truth == t].mean(0)) ** 2).sum() for t in range(4))
    assert res.final_inertia == pytest.approx(within, rel=1e-4)
    assert np.all(np.diff(res.inertia) <= 1e-3 * res.inertia[:-1]) and 1 <= len(res.inertia) <= 20
    again = sup.kmeans(x, 4, iterations=20, seed=0, n_init=4)
    assert np.array_equal(again.centroids, res.centroids)  # fixed seed: reproducible
    for init in sup.INITS:  # every seeding the params allow runs and ends at the same optimum here
        assert sup.kmeans(x, 4, 20, 0, n_init=4, init=init).final_inertia == pytest.approx(within, rel=1e-4), init
    with pytest.raises(ValueError, match="k <= number of points"):
        sup.kmeans(x[:3], 4, 5, 0)


def test_nearest_in_class_only_picks_the_own_classes_subclasses():
    centers = np.array([[0.0], [1.0], [10.0], [11.0]], np.float32)  # class 0: 0,1; class 1: 2,3 (2 each)
    z = np.array([[0.1], [10.2], [10.9], [0.4]], np.float32)
    labels = np.array([0, 0, 1, 1])
    own = sup.nearest_in_class(z, labels, centers, subclasses=2)
    assert own.tolist() == [0, 1, 3, 2]  # rows 2-3 are nearer to other-class centres, but may not pick them
    assert np.all(own // 2 == labels)


def test_decision_matrix_by_hand():
    own = np.array([0, 0, 1, 1, 1])
    decided = np.array([0, 1, 1, 1, 0])
    d = sup.decision_matrix(own, decided, 3)
    assert np.allclose(d, [[0.5, 0.5, 0], [1 / 3, 2 / 3, 0], [0, 0, 1]])  # sub-class 2 is empty: decides itself


def test_lda_subclass_targets_have_the_documented_shapes_and_rows_are_distributions():
    from sklearn.discriminant_analysis import LinearDiscriminantAnalysis

    rng = np.random.default_rng(1)
    num_classes, sub, dim, channels = 3, 4, 2, 6
    f = rng.standard_normal((num_classes * 200, channels)).astype(np.float32)
    labels = np.repeat(np.arange(num_classes), 200)
    f[:, 0] += 3.0 * labels  # class structure on one axis
    t = sup.lda_subclasses(f, labels, num_classes, dim, sub, iterations=10, seed=0)
    size = num_classes * sub
    assert t.scalings.shape == (channels, dim) and t.xbar.shape == (channels,)
    assert t.centers.shape == t.prototypes.shape == (size, dim)
    assert t.counts.shape == (size,) and t.counts.sum() == len(f)
    assert t.decision.shape == (size, size)
    assert np.all(t.decision >= 0) and np.allclose(t.decision.sum(1), 1.0, atol=1e-6)
    assert np.all(t.own // sub == labels)  # every location sits in a sub-class of its own class
    # the projection is scikit-learn's LDA transform (same SVD solver, same data)
    ref = LinearDiscriminantAnalysis(n_components=dim, solver="svd").fit(f, labels).transform(f)
    assert np.allclose(sup.lda_project(f, t.scalings, t.xbar), ref, atol=1e-3)
    # each prototype is the mean of its sub-class's LDA vectors
    z = sup.lda_project(f, t.scalings, t.xbar)
    s = int(np.argmax(t.counts))
    assert np.allclose(t.prototypes[s], z[t.own == s].mean(0), atol=1e-4)
    with pytest.raises(KdlensError, match=r"supervision.lda_dim: 3 is not in \[1, 2\]"):
        sup.lda_subclasses(f, labels, num_classes, 3, sub, iterations=5, seed=0)


def _tiny_data(n=24, num_classes=4, size=32):
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (n, 3, size, size), dtype=np.uint8)
    labels = np.arange(n) % num_classes
    split = Split(images, labels)
    card = {"classes": [str(c) for c in range(num_classes)], "mean": [0.5] * 3, "std": [0.25] * 3,
            "sha256": "x", "name": "tiny"}
    return Prepared(train=split, test=split, card=card)


def test_build_save_load_roundtrip_and_one_line_errors(tmp_path):
    torch.manual_seed(0)
    teacher = models.create("resnet8", 4).eval()
    data = _tiny_data()
    cfg = SupervisionParams(k=16, iterations=5, lda_dim=3, subclasses=2, batch_size=10)
    built = sup.build_supervision(teacher, data, cfg, torch.device("cpu"))
    assert built.info["penult_grid"] == [8, 8] and built.info["inter_grid"] == [16, 16]
    assert built.info["locations"] == {"penult": 24 * 64, "inter": 24 * 256}
    assert built.arrays["centroids"].shape == (16, 64) and built.arrays["lda_scalings"].shape == (32, 3)
    assert built.arrays["centroid_counts"].sum() == 24 * 64
    again = sup.build_supervision(teacher, data, cfg, torch.device("cpu"))
    for name in store.ARRAYS:  # seeded end to end: the same teacher and params give the same supervision
        assert np.array_equal(again.arrays[name], built.arrays[name]), name
    card = store.save_supervision(tmp_path / "s", built.arrays, built.info)
    first = (tmp_path / "s" / store.NPZ).read_bytes()
    store.save_supervision(tmp_path / "s", built.arrays, built.info)
    assert (tmp_path / "s" / store.NPZ).read_bytes() == first  # deterministic bytes: DVC sees no change
    loaded = store.load_supervision(tmp_path / "s")
    assert loaded["card"]["sha256"] == card["sha256"]
    for name in store.ARRAYS:
        assert np.array_equal(loaded[name], built.arrays[name]), name

    pooled = sup.build_supervision(teacher, data, cfg.model_copy(update={"penult_size": 4, "inter_size": 8}),
                                   torch.device("cpu"))
    assert pooled.info["penult_grid"] == [4, 4] and pooled.info["locations"]["penult"] == 24 * 16

    def one_line(path, match):
        with pytest.raises(KdlensError) as e:
            store.load_supervision(path)
        assert "\n" not in str(e.value) and match in str(e.value), str(e.value)

    (tmp_path / "s" / store.NPZ).write_bytes(first[:100])
    one_line(tmp_path / "s", f"{tmp_path / 's' / store.NPZ}: checksum does not match")
    c = json.loads((tmp_path / "s" / store.CARD).read_text())
    (tmp_path / "s" / store.CARD).write_text(json.dumps({**c, "sha256": sha256_file(tmp_path / "s" / store.NPZ)}))
    one_line(tmp_path / "s", f"{tmp_path / 's' / store.NPZ}: corrupt")
    (tmp_path / "s" / store.CARD).write_text("{")
    one_line(tmp_path / "s", f"{tmp_path / 's' / store.CARD}: corrupt JSON")
    one_line(tmp_path / "absent", f"{tmp_path / 'absent' / store.CARD}: missing")

    with pytest.raises(KdlensError, match="supervision.k: 4096 centroids for only 1536"):
        sup.build_supervision(teacher, data, cfg.model_copy(update={"k": 4096}), torch.device("cpu"))
    with pytest.raises(KdlensError, match="supervision.inter_stage: -1 is not an intermediate stage"):
        sup.build_supervision(teacher, data, cfg.model_copy(update={"inter_stage": -1}), torch.device("cpu"))
