"""cc: the Taylor-expanded RBF correlation loss against numpy, the kernel it approximates, the student
gradient against numpy finite differences, invariances, defaults, the learnt embeddings (gradient, extra
parameter count), weighting, a step on a cross-family pair."""
import math

import numpy as np
import pytest
import torch

import methods
from method_helpers import (assert_each_gets_gradient, assert_step_updates_student, assert_terms_send_gradient,
                            make_method, make_pair, random_batch)
from methods.cc import cc_loss, correlation_matrix

E_S = np.array([[1.0, 2.0, 0.0], [0.0, 1.0, -1.0], [3.0, -1.0, 2.0], [0.5, 0.5, 0.5]])
E_T = np.array([[2.0, 0.5, 1.0], [-1.0, 1.0, 0.0], [0.0, 4.0, 1.0], [1.0, -2.0, 0.5]])


def _np_correlations(e, gamma, order):
    u = e / np.sqrt((e**2).sum(axis=1, keepdims=True))
    c = np.zeros((len(u), len(u)))
    for i in range(len(u)):
        for j in range(len(u)):
            cos = float(u[i] @ u[j])
            series = sum((2 * gamma) ** p / math.factorial(p) * cos**p for p in range(order + 1))
            c[i, j] = math.exp(-2 * gamma) * series
    return c


def _np_cc(es, et, gamma=0.4, order=2):
    d = _np_correlations(es, gamma, order) - _np_correlations(et, gamma, order)
    return (d**2).sum() / len(es) ** 2


def test_cc_loss_matches_numpy():
    for gamma, order in ((0.4, 2), (1.0, 3), (0.4, 0)):
        expected = _np_cc(E_S, E_T, gamma, order)
        got = cc_loss(torch.tensor(E_S), torch.tensor(E_T), gamma, order).item()
        assert abs(got - expected) < 1e-12
        if order > 0:
            assert expected > 1e-4  # the fixture is not a degenerate case
    assert _np_cc(E_S, E_T, 0.4, 0) == 0.0  # order 0: a constant kernel carries no relation


def test_the_expansion_approximates_the_gaussian_rbf_kernel_of_unit_vectors():
    u = torch.nn.functional.normalize(torch.tensor(E_S), dim=1)
    rbf = torch.exp(-0.4 * torch.cdist(u, u) ** 2)
    assert torch.allclose(correlation_matrix(u, 0.4, 25), rbf, atol=1e-12)
    # P = 2 truncates the series of exp(2g cos); its tail is largest at cos = 1 (the diagonal):
    # 1 - e^(-2g) (1 + 2g + 2g^2)
    error = (correlation_matrix(u, 0.4, 2) - rbf).abs()
    assert abs(error.max().item() - (1 - math.exp(-0.8) * (1 + 0.8 + 0.32))) < 1e-12
    assert abs(error.diagonal().min().item() - error.max().item()) < 1e-12
    # its entries on unit vectors lie in [0.23, 0.95] (cos = -1 and cos = 1), as the module docstring says
    assert abs(correlation_matrix(torch.tensor([[1.0], [-1.0]]), 0.4, 2)[0, 1] - 0.2336) < 1e-4
    assert abs(correlation_matrix(torch.tensor([[1.0]]), 0.4, 2)[0, 0] - 0.9526) < 1e-4


def test_student_gradient_matches_numpy_finite_differences():
    h = 1e-6
    es = torch.tensor(E_S, requires_grad=True)
    (grad,) = torch.autograd.grad(cc_loss(es, torch.tensor(E_T)), es)
    expected = np.zeros_like(E_S)
    for idx in np.ndindex(E_S.shape):
        up, down = E_S.copy(), E_S.copy()
        up[idx] += h
        down[idx] -= h
        expected[idx] = (_np_cc(up, E_T) - _np_cc(down, E_T)) / (2 * h)
    assert np.abs(expected).max() > 1e-4
    assert np.allclose(grad.numpy(), expected, atol=1e-8)


def test_zero_for_equal_correlations_and_positive_otherwise():
    e = torch.tensor(E_S)
    assert cc_loss(e, e).item() == 0.0
    # per-sample scale (removed by the normalisation) and a rotation (dot products kept) change nothing
    rotation, _ = torch.linalg.qr(torch.tensor([[1.0, 2.0, 0.0], [0.0, 1.0, 3.0], [1.0, 0.0, 1.0]]).double())
    assert cc_loss(e * torch.tensor([[2.0], [0.5], [7.0], [3.0]]) @ rotation, e).item() < 1e-20
    assert cc_loss(e.flip(0), e).item() > 1e-4


def test_defaults_are_the_reference_values():
    p = methods.params_class("cc")()
    assert (p.ce_weight, p.cc_weight, p.feat_dim, p.gamma, p.order) == (1.0, 10.0, 128, 0.4, 2)
    with pytest.raises(ValueError):
        methods.params_class("cc")(gamma=0.0)


def test_terms_are_weighted_and_send_gradient_to_student_and_both_embeddings():
    t, s = make_pair("resnet14", "resnet8")
    m = make_method("cc", s, t, cc_weight=3.0)
    out_s, out_t, y = random_batch(s, t, batch=6)
    terms = m.losses(out_s, out_t, y, torch.arange(6), epoch=1)
    assert set(terms) == {"ce", "cc"}
    with torch.no_grad():
        e_s = m.embed_s(out_s[1].pooled).double().numpy()
        e_t = m.embed_t(out_t[1].pooled).double().numpy()
    expected = 3.0 * _np_cc(e_s, e_t)
    assert expected > 0 and abs(terms["cc"].item() - expected) < 1e-5 * expected
    assert_terms_send_gradient(terms, s)
    assert_each_gets_gradient(terms["cc"], m.named_parameters())  # the teacher's map is learnt too


def test_no_gradient_reaches_the_teacher_network():
    t, s = make_pair("resnet14", "resnet8")
    m = make_method("cc", s, t)
    x = torch.randn(4, 3, 32, 32)
    cc = m.losses(s(x), t(x), torch.arange(4), torch.arange(4), epoch=1)["cc"]  # teacher forward with autograd on
    assert all(g is None for g in torch.autograd.grad(cc, list(t.parameters()), allow_unused=True))


def test_extra_parameter_count_is_the_two_linear_maps():
    t, s = make_pair("resnet14", "resnet8")  # 64-d pooled on both sides
    assert make_method("cc", s, t).extra_parameter_count() == 2 * (64 * 128 + 128)
    t, s = make_pair("vgg8", "MobileNetV2")  # 512-d teacher, 1280-d student
    m = make_method("cc", s, t, feat_dim=32)
    assert m.embed_s.in_features == 1280 and m.embed_t.in_features == 512
    assert m.extra_parameter_count() == (1280 + 1) * 32 + (512 + 1) * 32


def test_cross_family_pair_runs_a_step():
    t, s = make_pair("vgg8", "MobileNetV2")
    assert_step_updates_student(make_method("cc", s, t), s, t, train_method=True, seed=1)
