"""The teacher-output cache (training/teacher.py): a student trained from it is bit-identical on CPU to one
trained with the live (BN-folded) teacher; top-k storage keeps the top-k probabilities and the tail mass;
a cache for other views is not used, and says why; one that also holds the strong view serves mlkd as the live
teacher would."""
import math
import warnings

import pytest
import torch

import methods
import models
from dataset import BUILDERS
from dataset.store import in_memory
from training.fitter import loaders
from training.jobs import train_network
from dataset.params import DataParams, ScenesParams
from training.params import TrainParams
from training.teacher import TeacherCache, Views, build_cache, frozen_teacher, open_cache

pytestmark = pytest.mark.cost(35)

INPUTS = {"data_sha256": "d" * 64, "teacher_sha256": "t" * 64}
CFG = TrainParams(epochs=2, batch_size=32, lr=0.05)


@pytest.fixture(scope="module")
def data():
    train, test, classes, _ = BUILDERS["scenes"](DataParams(scenes=ScenesParams(n_train=96, n_test=48)))
    return in_memory(train, test, classes, "scenes")


@pytest.fixture(scope="module")
def teacher():
    torch.manual_seed(5)
    net = models.create("resnet8", 10)
    with torch.no_grad():  # non-trivial BN statistics, as a trained teacher has
        net.train()(torch.randn(64, 3, 32, 32))
    return net.eval()


def _cache(data, teacher, tmp_path, dtype="float32", top_k=0, cfg=CFG, compiled=False):
    loader = loaders(data, cfg, 0, torch.device("cpu"))[0]
    build_cache(frozen_teacher(teacher, 32, compiled), loader, cfg.epochs, tmp_path, dtype, top_k, INPUTS)
    return loader


def _assert_same_training(live, cached):
    """The run that read the cache trained exactly as the one that ran the teacher."""
    assert live.teacher_source == "live" and cached.teacher_source == "cache"
    for a, b in zip(live.result.history, cached.result.history):
        assert a["train/loss"] == b["train/loss"] and a["test/top1"] == b["test/top1"]
    for k, v in live.student.state_dict().items():
        assert torch.equal(v, cached.student.state_dict()[k]), k


@pytest.mark.parametrize("method,compiled", [("kd", False), ("dkd", False), ("kd", True)])
def test_student_from_cache_is_identical_to_live_teacher(data, teacher, tmp_path, method, compiled):
    """Also with the compiled teacher (trainer.compile_teacher, the default) in both the cache and the
    live run: the same compiled kernels give the same logits."""
    _cache(data, teacher, tmp_path / "cache", compiled=compiled)

    def train(work, cache):
        return train_network("resnet8", CFG, 0, method, methods.params_class(method)(), data, work,
                             teacher=teacher, teacher_cache=cache, compile_teacher=compiled)

    _assert_same_training(train(tmp_path / "live", None), train(tmp_path / "cached", (tmp_path / "cache", INPUTS)))


def test_top_k_keeps_top_probabilities_and_tail_mass(data, teacher, tmp_path):
    loader = _cache(data, teacher, tmp_path / "full")
    _cache(data, teacher, tmp_path / "top3", top_k=3)
    full, top = TeacherCache(tmp_path / "full", torch.device("cpu")), TeacherCache(tmp_path / "top3", torch.device("cpu"))
    idx = torch.arange(20)
    z, _ = full(None, idx, 2)
    r, _ = top(None, idx, 2)
    p, q = z.softmax(1), r.softmax(1)
    top3 = z.topk(3, dim=1).indices
    torch.testing.assert_close(q.gather(1, top3), p.gather(1, top3), rtol=1e-5, atol=1e-6)
    tail = torch.ones_like(p, dtype=torch.bool).scatter(1, top3, False)
    torch.testing.assert_close((q * tail).sum(1), (p * tail).sum(1), rtol=1e-5, atol=1e-6)
    # what is lost: the tail is spread evenly (each tail class gets the same logit)
    tail_logits = r[tail].view(20, 7)
    assert torch.all(tail_logits == tail_logits[:, :1])
    assert top.card["bytes"] < full.card["bytes"]
    assert loader.num_samples == 96


def test_float16_cache_is_close(data, teacher, tmp_path):
    _cache(data, teacher, tmp_path / "f32")
    _cache(data, teacher, tmp_path / "f16", dtype="float16")
    a = TeacherCache(tmp_path / "f32", torch.device("cpu"))(None, torch.arange(96), 1)[0]
    b = TeacherCache(tmp_path / "f16", torch.device("cpu"))(None, torch.arange(96), 1)[0]
    torch.testing.assert_close(b, a, rtol=1e-3, atol=1e-3 * math.ceil(a.abs().max().item()))


def test_a_cache_for_other_views_or_another_teacher_is_not_used(data, teacher, tmp_path):
    loader = _cache(data, teacher, tmp_path)
    views = Views.of(loader, CFG.epochs)
    assert open_cache(tmp_path, views, INPUTS, torch.device("cpu"))[0] is not None
    other = Views(**{**views.__dict__, "epochs": 3})
    cache, why = open_cache(tmp_path, other, INPUTS, torch.device("cpu"))
    assert cache is None and "differ" in why and "'epochs': 3" in why
    cache, why = open_cache(tmp_path, views, {**INPUTS, "teacher_sha256": "x" * 64}, torch.device("cpu"))
    assert cache is None and why == "cache built from another teacher"
    assert open_cache(tmp_path / "missing", views, INPUTS, torch.device("cpu"))[1].startswith("no ")


def test_a_cache_with_the_strong_view_serves_mlkd_as_the_live_teacher_would(data, teacher, tmp_path):
    """mlkd reads a second, strong view of every batch: the cache holds the teacher's logits for both views
    (teacher_cache.extra_views), and a cache without the strong one is passed over, saying why."""
    loader = loaders(data, CFG, 0, torch.device("cpu"))[0]
    build_cache(frozen_teacher(teacher, 32), loader, CFG.epochs, tmp_path / "both", "float32", 0, INPUTS,
                extra_views=("strong",))
    _cache(data, teacher, tmp_path / "standard")

    def train(work, cache):
        return train_network("resnet8", CFG, 0, "mlkd", methods.params_class("mlkd")(), data, work,
                             teacher=teacher, teacher_cache=cache)

    _assert_same_training(train(tmp_path / "live", None), train(tmp_path / "cached", (tmp_path / "both", INPUTS)))
    views = Views.of(loader, CFG.epochs)
    cache, why = open_cache(tmp_path / "standard", views, INPUTS, torch.device("cpu"), ("strong",))
    assert cache is None and why == "the cache holds no 'strong' view (teacher_cache.extra_views: [strong])"
    assert open_cache(tmp_path / "both", views, INPUTS, torch.device("cpu"))[0] is not None  # kd reads it too


def test_feature_methods_never_read_the_cache(data, teacher, tmp_path):
    _cache(data, teacher, tmp_path / "cache")
    trained = train_network("resnet8", TrainParams(epochs=1, batch_size=32), 0, "at", methods.params_class("at")(),
                            data, tmp_path / "w", teacher=teacher, teacher_cache=(tmp_path / "cache", INPUTS))
    assert trained.teacher_source == "live"


@pytest.mark.parametrize("name", ["resnet8", "wrn_16_2", "MobileNetV2", "vgg8"])
def test_frozen_teacher_matches_the_teacher_and_hands_back_contiguous_maps(name):
    torch.manual_seed(0)
    net = models.create(name, 10)
    with torch.no_grad():
        net.train()(torch.randn(32, 3, 32, 32))  # non-trivial BN statistics
    net.eval()
    fast = frozen_teacher(net, 32)
    assert not any(p.requires_grad for p in fast.parameters())
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        (z, f), (zf, ff) = net(x), fast(x)
    torch.testing.assert_close(zf, z, rtol=1e-4, atol=1e-4)
    for a, b in zip([f.stem, *f.stages, *f.preact], [ff.stem, *ff.stages, *ff.preact]):
        assert b.is_contiguous()
        torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-4 * max(1.0, a.abs().max().item()))


@pytest.mark.parametrize("name", ["resnet8", "wrn_16_2"])
def test_compiled_teacher_matches_the_eager_one_at_every_batch_shape(name):
    torch.manual_seed(0)
    net = models.create(name, 10)
    with torch.no_grad():
        net.train()(torch.randn(32, 3, 32, 32))
    net.eval()
    eager, compiled = frozen_teacher(net, 32), frozen_teacher(net, 32, compiled=True)
    assert {n for n, _ in compiled.named_parameters()} == {n for n, _ in eager.named_parameters()}
    for batch in (8, 3):  # a training batch, then a smaller last batch (a second compile)
        x = torch.randn(batch, 3, 32, 32)
        with torch.no_grad():
            (z, f), (zc, fc) = eager(x), compiled(x)
        torch.testing.assert_close(zc, z, rtol=1e-4, atol=1e-4)
        for a, b in zip([f.stem, *f.stages, *f.preact, f.pooled], [fc.stem, *fc.stages, *fc.preact, fc.pooled]):
            assert b.is_contiguous()
            torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-4 * max(1.0, a.abs().max().item()))


def test_teacher_runs_uncompiled_with_a_warning_when_torch_compile_fails(teacher, monkeypatch):
    """No working C++ compiler (a real inductor failure, not a mock): same outputs, one warning."""
    import torch._inductor.config as inductor

    monkeypatch.setattr(inductor.cpp, "cxx", ("/nonexistent/g++",))
    monkeypatch.setattr(inductor, "fx_graph_cache", False)  # a cached kernel would need no compiler
    fast = frozen_teacher(teacher, 32, compiled=True)
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad(), pytest.warns(UserWarning, match=r"trainer.compile_teacher: torch.compile failed "
                                                          r"\(InvalidCxxCompiler"):
        z = fast(x)[0]
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("error")  # no second attempt, no second warning
        torch.testing.assert_close(fast(x)[0], z, rtol=0, atol=0)
        torch.testing.assert_close(z, frozen_teacher(teacher, 32)(x)[0], rtol=0, atol=0)
