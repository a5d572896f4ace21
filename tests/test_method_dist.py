"""dist: inter/intra Pearson relations against numpy, the student gradient against numpy finite
differences, zero at agreement, defaults, weighting, teacher-cache use, a step on a cross-family pair."""
import numpy as np
import pytest
import torch

import methods
from method_helpers import (assert_no_extra_parameters, assert_step_updates_student, assert_terms_send_gradient,
                            make_method, make_pair, random_batch)
from methods.dist import dist_loss
from training.jobs import reads_teacher_logits_only

ZS = np.array([[1.0, 2.0, 0.5, -1.0], [0.0, -1.0, 3.0, 0.2], [0.3, 0.1, 0.0, 2.0]])
ZT = np.array([[2.0, 1.0, 0.0, 0.5], [1.0, 1.5, 1.0, -2.0], [-1.0, 0.5, 2.5, 1.0]])


def _np_dist(zs, zt, T, eps=1e-8):
    """(inter, intra) written out with loops: Pearson over each row, then over each column."""
    def softmax_rows(z):
        e = np.exp(z / T - (z / T).max(axis=1, keepdims=True))
        return e / e.sum(axis=1, keepdims=True)

    def pearson(u, v):
        du, dv = u - u.mean(), v - v.mean()
        return float(du @ dv) / (np.sqrt(du @ du) * np.sqrt(dv @ dv) + eps)

    ps, pt = softmax_rows(zs), softmax_rows(zt)
    b, n = ps.shape
    inter = 1 - sum(pearson(ps[i], pt[i]) for i in range(b)) / b
    intra = 1 - sum(pearson(ps[:, c], pt[:, c]) for c in range(n)) / n
    return T * T * inter, T * T * intra


def test_dist_loss_matches_numpy():
    for T in (1.0, 4.0):
        exp_inter, exp_intra = _np_dist(ZS, ZT, T)
        inter, intra = dist_loss(torch.tensor(ZS), torch.tensor(ZT), T)
        assert abs(inter.item() - exp_inter) < 1e-10 and abs(intra.item() - exp_intra) < 1e-10
        assert exp_inter > 1e-3 and exp_intra > 1e-3  # the fixture is not a degenerate case
    # without eps the terms are 1 - numpy's own Pearson coefficient
    ps, pt = (torch.tensor(z).softmax(1).numpy() for z in (ZS, ZT))
    inter, intra = dist_loss(torch.tensor(ZS), torch.tensor(ZT), 1.0)
    assert abs(inter.item() - (1 - np.mean([np.corrcoef(ps[i], pt[i])[0, 1] for i in range(3)]))) < 1e-6
    assert abs(intra.item() - (1 - np.mean([np.corrcoef(ps[:, c], pt[:, c])[0, 1] for c in range(4)]))) < 1e-6


def test_student_gradient_matches_numpy_finite_differences():
    T, beta, gamma, h = 4.0, 2.0, 3.0, 1e-6
    zs = torch.tensor(ZS, requires_grad=True)
    inter, intra = dist_loss(zs, torch.tensor(ZT), T)
    (grad,) = torch.autograd.grad(beta * inter + gamma * intra, zs)

    def total(z):
        i, a = _np_dist(z, ZT, T)
        return beta * i + gamma * a

    expected = np.zeros_like(ZS)
    for idx in np.ndindex(ZS.shape):
        up, down = ZS.copy(), ZS.copy()
        up[idx] += h
        down[idx] -= h
        expected[idx] = (total(up) - total(down)) / (2 * h)
    assert np.abs(expected).max() > 1e-3
    assert np.allclose(grad.numpy(), expected, atol=1e-7)


def test_zero_when_the_relations_agree():
    zt = torch.tensor(ZT)
    # zero up to eps / ||p - mean p||^2 (times T^2): about 1e-5 at T = 4, where p is nearly uniform
    for T, tol in ((1.0, 1e-6), (4.0, 1e-4)):
        inter, intra = dist_loss(zt, zt, T)
        assert 0 <= inter.item() < tol and 0 <= intra.item() < tol
    # a per-sample shift of the logits leaves the probabilities, hence both relations, unchanged
    shifted = dist_loss(zt + torch.tensor([[3.0], [-1.0], [0.5]]), zt, 4.0)
    assert all(abs(a.item() - b.item()) < 1e-12 for a, b in zip(shifted, dist_loss(zt, zt, 4.0)))


def test_defaults_are_the_papers_cifar_values():
    p = methods.params_class("dist")()
    assert (p.ce_weight, p.beta, p.gamma, p.T) == (1.0, 2.0, 2.0, 4.0)
    with pytest.raises(ValueError):
        methods.params_class("dist")(T=0.0)


def test_reads_only_the_teacher_logits():
    assert reads_teacher_logits_only("dist")
    # a student exposing no features is served, and the cache's (logits, None) teacher output is enough
    torch.manual_seed(0)
    student = torch.nn.Linear(5, 3)
    ctx = methods.MethodContext(student=student, teacher=torch.nn.Linear(5, 3), num_classes=3, num_train=8)
    m = methods.create("dist", methods.params_class("dist")(), ctx)
    x, y = torch.randn(8, 5), torch.randint(0, 3, (8,))
    terms = m.losses((student(x), None), (torch.randn(8, 3), None), y, torch.arange(8), epoch=1)
    assert_terms_send_gradient(terms, student)


def test_terms_are_weighted_and_send_gradient_to_the_student():
    t, s = make_pair("resnet14", "resnet8")
    m = make_method("dist", s, t, beta=1.5, gamma=0.5)
    out_s, out_t, y = random_batch(s, t, batch=8)
    terms = m.losses(out_s, out_t, y, torch.arange(8), epoch=1)
    assert set(terms) == {"ce", "dist_inter", "dist_intra"}
    inter, intra = _np_dist(out_s[0].detach().double().numpy(), out_t[0].double().numpy(), 4.0)
    assert abs(terms["dist_inter"].item() - 1.5 * inter) < 1e-5
    assert abs(terms["dist_intra"].item() - 0.5 * intra) < 1e-5
    assert_terms_send_gradient(terms, s)
    assert_no_extra_parameters(m)


def test_cross_family_pair_runs_a_step():
    t, s = make_pair("vgg8", "ShuffleV1")
    assert_step_updates_student(make_method("dist", s, t), s, t, seed=1)
