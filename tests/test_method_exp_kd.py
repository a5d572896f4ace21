"""exp_kd: CAMs and L_cam against numpy, the required checks (non-zero student gradient, as-coded loss
constant, CAM-logit identity), warm-up, cross-family pairs."""
import itertools

import numpy as np
import pydantic
import pytest
import torch

import methods
import models
from method_helpers import (assert_no_extra_parameters, assert_terms_send_gradient, grad_abs_sums, make_method,
                            make_pair, random_batch, random_inputs)
from methods.cam import class_activation_maps
from methods.exp_kd import cam_loss, cam_saliency


def _np_softmax(x, axis):
    e = np.exp(x - x.max(axis=axis, keepdims=True))
    return e / e.sum(axis=axis, keepdims=True)


def test_class_activation_maps_match_numpy():
    rng = np.random.default_rng(0)
    feat = rng.normal(size=(2, 3, 2, 2))
    weight = rng.normal(size=(4, 3))
    classes = np.array([[2, 0], [1, 3]])
    expected = np.zeros((2, 2, 2, 2))
    for b, j, h, w in itertools.product(range(2), range(2), range(2), range(2)):
        expected[b, j, h, w] = sum(weight[classes[b, j], c] * feat[b, c, h, w] for c in range(3)) / 3
    got = class_activation_maps(torch.tensor(feat), torch.tensor(weight), torch.tensor(classes), "mean", relu=False)
    assert np.allclose(got.numpy(), expected, atol=1e-12)
    got = class_activation_maps(torch.tensor(feat), torch.tensor(weight), torch.tensor(classes), "sum")
    assert np.allclose(got.numpy(), np.maximum(expected * 3, 0), atol=1e-12)
    assert (expected < 0).any()  # the ReLU is exercised


def test_cam_saliency_is_the_min_max_normalised_top_class_cam():
    feat = torch.zeros(1, 2, 2, 2)
    feat[0, 0] = torch.tensor([[1.0, 2.0], [3.0, 5.0]])
    feat[0, 1] = torch.tensor([[4.0, 0.0], [0.0, 0.0]])
    weight = torch.tensor([[1.0, 0.0], [-1.0, 1.0]])
    logits = torch.tensor([[0.0, 1.0]])  # class 1: CAM = (f1 - f0) / 2 = [[1.5, -1], [-1.5, -2.5]]
    sal = cam_saliency(feat, weight, logits, 2)
    assert torch.allclose(sal[0], torch.tensor([[1.0, 0.375], [0.25, 0.0]]))
    assert cam_saliency(feat, weight, logits, 8).shape == (1, 8, 8)


def test_cam_loss_matches_numpy():
    rng = np.random.default_rng(1)
    ms, mt = np.abs(rng.normal(size=(2, 3, 2, 2))), np.abs(rng.normal(size=(2, 3, 2, 2)))
    T = 0.5
    flat = lambda m: m.reshape(2, 3, 4)  # noqa: E731
    p = {
        "softmax_class": lambda m: _np_softmax(m / T, axis=1),
        "softmax_spatial": lambda m: _np_softmax(flat(m) / T, axis=2).reshape(m.shape),
        "l2_spatial": lambda m: (flat(m) / np.sqrt((flat(m) ** 2).sum(axis=2, keepdims=True))).reshape(m.shape),
        "none": lambda m: m,
    }
    for norm, f in p.items():
        sq = (f(ms) - f(mt)) ** 2
        for reduction, expected in (("sum", sq.sum()), ("mean", sq.mean()), ("batchmean", sq.sum() / 2)):
            got = cam_loss(torch.tensor(ms), torch.tensor(mt), norm, T, reduction).item()
            assert abs(got - expected) < 1e-12, (norm, reduction)
        assert sq.sum() > 1e-4, norm
    # the HEAD formula: sum over elements of (mean of the batch-softmaxed student - batch-softmaxed teacher)^2
    pt = _np_softmax(mt / T, axis=0)
    expected = ((_np_softmax(ms / T, axis=0).mean() - pt) ** 2).sum()
    got = cam_loss(torch.tensor(ms), torch.tensor(mt), "softmax_batch_as_coded", T, "sum").item()
    assert abs(got - expected) < 1e-12
    assert abs(expected - ((0.5 - pt) ** 2).sum()) < 1e-12  # mean(P_s) is exactly 1/B


@pytest.fixture(scope="module")
def pair():
    t, s = make_pair("resnet14", "resnet8")
    x, y = random_inputs(4)
    with torch.no_grad():
        out_t = t(x)
    return s, t, x, y, out_t


def _cam_grad(pair, **params):
    s, t, x, y, out_t = pair
    m = make_method("exp_kd", s, t, **params)
    terms = m.losses(s(x), out_t, y, torch.arange(len(y)), epoch=1)
    return terms, sum(grad_abs_sums(terms["cam"], s.parameters()))


def test_defaults():
    p = methods.params_class("exp_kd")()
    assert (p.ce_weight, p.T, p.class_set, p.k, p.agg, p.norm, p.reduction, p.resize_to, p.warmup, p.combine_with) == \
        (1.0, 1.0, "topk_teacher", 30, "mean", "softmax_class", "batchmean", "student", 1, "none")


NORMS = ["softmax_class", "softmax_spatial", "l2_spatial", "none"]


@pytest.mark.parametrize("norm", NORMS)
def test_i_student_gradient_nonzero_in_every_mode(pair, norm):
    # (the reduction only rescales the loss; resizing is exercised by the cross-family pairs below)
    for class_set, agg in itertools.product(("topk_teacher", "all", "gt_only"), ("mean", "sum")):
        if class_set == "gt_only" and norm == "softmax_class":
            continue  # refused by the params validator (a softmax over one class is constant)
        terms, g = _cam_grad(pair, norm=norm, class_set=class_set, agg=agg)
        assert set(terms) == {"ce", "cam"}
        assert g > 0, (norm, class_set, agg)


def test_ii_as_coded_loss_is_constant_in_the_student(pair):
    s, t, x, y, out_t = pair
    terms, g = _cam_grad(pair, norm="softmax_batch_as_coded")
    _, g_ce = _cam_grad(pair)  # a working mode on the same batch, for scale
    assert g < 1e-9 * max(g_ce, 1.0)
    # the value does not move when the student's weights change
    other = models.create("resnet8", 10)
    m = make_method("exp_kd", other, t, norm="softmax_batch_as_coded")
    terms2 = m.losses(other(x), out_t, y, torch.arange(len(y)), epoch=1)
    assert abs(terms2["cam"].item() - terms["cam"].item()) < 1e-6 * max(1.0, terms["cam"].item())
    assert terms["cam"].item() > 0


# The LTB tree students have per-class heads, no classifier Linear: CAM methods refuse them.
@pytest.mark.parametrize("name", [n for n in models.names() if not n.startswith("ltb")])
def test_iii_pre_relu_cam_reproduces_the_logits(name):
    torch.manual_seed(0)
    net = models.create(name, 10)  # train mode: batch statistics keep deep random nets' logits O(1)
    with torch.no_grad():
        net.classifier.bias.normal_()
        z, feats = net(torch.randn(2, 3, 32, 32))
        f = feats.stages[-1]
        classes = torch.arange(10).expand(2, 10)
        for agg, scale in (("mean", f.shape[1]), ("sum", 1)):
            cam = class_activation_maps(f, net.classifier.weight, classes, agg, relu=False)
            rebuilt = cam.mean(dim=(2, 3)) * scale + net.classifier.bias
            assert torch.allclose(rebuilt, z, atol=1e-4 * max(1.0, float(z.abs().max()))), (name, agg)


def test_topk_clamped_warmup_and_weighting(pair):
    s, t, x, y, out_t = pair
    m = make_method("exp_kd", s, t, cam_weight=3.0, warmup=4)
    out_s = s(x)
    m_s, m_t = m.cams(out_s, out_t, y)
    assert m_s.shape == m_t.shape == (4, 10, 8, 8)  # k=30 clamped to the 10 classes
    # the teacher's top class sits in slot 0 and its CAM is the teacher's own
    own = class_activation_maps(out_t[1].stages[-1], t.classifier.weight, out_t[0].argmax(1, keepdim=True))
    assert torch.allclose(m_t[:, 0], own[:, 0], atol=1e-7)
    base = cam_loss(m_s, m_t).item()
    assert abs(m.losses(out_s, out_t, y, torch.arange(4), epoch=1)["cam"].item() - 3.0 * base / 4) < 1e-6 * max(base, 1)
    assert abs(m.losses(out_s, out_t, y, torch.arange(4), epoch=9)["cam"].item() - 3.0 * base) < 1e-6 * max(base, 1)
    assert_no_extra_parameters(m)


def test_single_class_softmax_is_refused():
    with pytest.raises(pydantic.ValidationError, match="single class"):
        methods.params_class("exp_kd")(class_set="gt_only")
    with pytest.raises(pydantic.ValidationError, match="single class"):
        methods.params_class("exp_kd")(k=1)


def test_combine_with_kd_and_dkd(pair):
    s, t, x, y, out_t = pair
    for combine, names in (("kd", {"ce", "cam", "kd"}), ("dkd", {"ce", "cam", "tckd", "nckd"})):
        m = make_method("exp_kd", s, t, combine_with=combine)
        terms = m.losses(s(x), out_t, y, torch.arange(4), epoch=1)
        assert set(terms) == names
        assert_terms_send_gradient(terms, s)  # every term, the CAM and CE ones included


@pytest.mark.parametrize("s_name,t_name,size", [("MobileNetV2", "vgg8", 2), ("ShuffleV1", "resnet8x4", 4)])
def test_cross_family_pairs(s_name, t_name, size):
    # teacher CAMs (4x4 / 8x8) are resized to the student's (2x2 / 4x4)
    t, s = make_pair(t_name, s_name)
    m = make_method("exp_kd", s, t)
    out_s, out_t, y = random_batch(s, t, batch=2)
    assert m.cams(out_s, out_t, y)[1].shape[-2:] == (size, size)
    terms = m.losses(out_s, out_t, y, torch.arange(2), epoch=1)
    assert_terms_send_gradient({"cam": terms["cam"]}, s)
    # the 2022 variant: the student CAM is upsampled to the teacher's size instead
    m = make_method("exp_kd", s, t, resize_to="teacher")
    assert m.cams(out_s, out_t, y)[0].shape[-2:] == (2 * size, 2 * size)
    cam = m.losses(out_s, out_t, y, torch.arange(2), epoch=1)["cam"]
    assert sum(grad_abs_sums(cam, s.parameters())) > 0
