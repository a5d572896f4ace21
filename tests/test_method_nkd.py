"""nkd: target and normalised non-target parts against numpy, the student gradient against numpy finite
differences, the CE form of the non-target part, defaults, weighting, teacher-cache use, a cross-family step."""
import numpy as np
import pytest
import torch

import methods
from method_helpers import (assert_no_extra_parameters, assert_step_updates_student, assert_terms_send_gradient,
                            make_method, make_pair, random_batch)
from methods.nkd import nkd_loss
from training.jobs import reads_teacher_logits_only

ZS = np.array([[1.0, 2.0, 0.5, -1.0], [0.0, -1.0, 3.0, 0.2], [0.3, 0.1, 0.0, 2.0]])
ZT = np.array([[2.0, 1.0, 0.0, 0.5], [1.0, 1.5, 1.0, -2.0], [-1.0, 0.5, 2.5, 1.0]])
Y = np.array([1, 2, 0])


def _softmax(z):
    e = np.exp(z - z.max())
    return e / e.sum()


def _np_nkd(zs, zt, y, T):
    """(L_target, L_non_target) from the definitions, one sample at a time."""
    target = non_target = 0.0
    for b, g in enumerate(y):
        target -= _softmax(zt[b])[g] * np.log(_softmax(zs[b])[g])
        others = [j for j in range(zs.shape[1]) if j != g]
        s_hat, t_hat = _softmax(zs[b][others] / T), _softmax(zt[b][others] / T)
        non_target -= T * T * (t_hat * np.log(s_hat)).sum()
    return target / len(y), non_target / len(y)


def test_nkd_loss_matches_numpy():
    for T in (1.0, 3.0):
        exp_t, exp_n = _np_nkd(ZS, ZT, Y, T)
        target, non_target = nkd_loss(torch.tensor(ZS), torch.tensor(ZT), torch.tensor(Y), T)
        assert abs(target.item() - exp_t) < 1e-10 and abs(non_target.item() - exp_n) < 1e-10
        assert exp_t > 1e-3 and exp_n > 1e-3  # the fixture is not a degenerate case
    with pytest.raises(ValueError, match="two classes"):
        nkd_loss(torch.zeros(2, 1), torch.zeros(2, 1), torch.zeros(2, dtype=torch.long), 1.0)


def test_student_gradient_matches_numpy_finite_differences():
    T, gamma, h = 3.0, 3.5, 1e-6
    zs = torch.tensor(ZS, requires_grad=True)
    target, non_target = nkd_loss(zs, torch.tensor(ZT), torch.tensor(Y), T)
    (grad,) = torch.autograd.grad(target + gamma * non_target, zs)

    def total(z):
        t, n = _np_nkd(z, ZT, Y, T)
        return t + gamma * n

    expected = np.zeros_like(ZS)
    for idx in np.ndindex(ZS.shape):
        up, down = ZS.copy(), ZS.copy()
        up[idx] += h
        down[idx] -= h
        expected[idx] = (total(up) - total(down)) / (2 * h)
    assert np.abs(expected).max() > 1e-3
    assert np.allclose(grad.numpy(), expected, atol=1e-7)


def test_non_target_part_is_a_cross_entropy_whose_gradient_vanishes_at_agreement():
    # student == teacher: the non-target part is T^2 times the teacher's normalised non-target entropy
    # (the KL part is 0), and it sends no gradient; the target part still pulls s_g up
    T = 3.0
    zs = torch.tensor(ZT, requires_grad=True)
    target, non_target = nkd_loss(zs, torch.tensor(ZT), torch.tensor(Y), T)
    entropy = 0.0
    for b, g in enumerate(Y):
        t_hat = _softmax(np.delete(ZT[b], g) / T)
        entropy -= (t_hat * np.log(t_hat)).sum()
    assert abs(non_target.item() - T * T * entropy / 3) < 1e-10
    (grad_non,) = torch.autograd.grad(non_target, zs, retain_graph=True)
    (grad_target,) = torch.autograd.grad(target, zs)
    assert grad_non.abs().max() < 1e-12
    assert all(grad_target[b, g] < 0 for b, g in enumerate(Y))


def test_defaults_are_the_authors_cifar_values():
    p = methods.params_class("nkd")()
    assert (p.ce_weight, p.gamma, p.T) == (1.0, 3.5, 3.0)
    with pytest.raises(ValueError):
        methods.params_class("nkd")(T=0.0)


def test_reads_only_the_teacher_logits():
    assert reads_teacher_logits_only("nkd")
    # a student exposing no features is served, and the cache's (logits, None) teacher output is enough
    torch.manual_seed(0)
    student = torch.nn.Linear(5, 3)
    ctx = methods.MethodContext(student=student, teacher=torch.nn.Linear(5, 3), num_classes=3, num_train=8)
    m = methods.create("nkd", methods.params_class("nkd")(), ctx)
    x, y = torch.randn(8, 5), torch.randint(0, 3, (8,))
    terms = m.losses((student(x), None), (torch.randn(8, 3), None), y, torch.arange(8), epoch=1)
    assert_terms_send_gradient(terms, student)


def test_terms_are_weighted_and_send_gradient_to_the_student():
    t, s = make_pair("resnet14", "resnet8")
    m = make_method("nkd", s, t, gamma=2.0, T=2.0)
    out_s, out_t, y = random_batch(s, t)
    terms = m.losses(out_s, out_t, y, torch.arange(4), epoch=1)
    assert set(terms) == {"ce", "nkd_target", "nkd_non_target"}
    target, non_target = _np_nkd(out_s[0].detach().double().numpy(), out_t[0].double().numpy(), y.numpy(), 2.0)
    assert abs(terms["nkd_target"].item() - target) < 1e-5
    assert abs(terms["nkd_non_target"].item() - 2.0 * non_target) < 1e-5
    assert_terms_send_gradient(terms, s)
    assert_no_extra_parameters(m)


def test_cross_family_pair_runs_a_step():
    t, s = make_pair("vgg8", "ShuffleV1")
    assert_step_updates_student(make_method("nkd", s, t), s, t, seed=1)
