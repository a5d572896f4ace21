"""wttm: the loss and its student gradient against numpy, its zero and its gamma = 1 case, the weighted terms,
logit-only reading (the teacher cache's output form), a real update on a pair."""
import numpy as np
import pytest
import torch

import methods
from method_helpers import assert_no_extra_parameters, assert_step_updates_student, make_method, make_pair
from methods.logits import kd_loss
from methods.wttm import wttm_loss
from models.base import Features
from training.jobs import reads_teacher_logits_only

ZS = np.array([[1.0, 2.0, 0.5, -1.0], [0.0, -1.0, 3.0, 0.2], [0.3, 0.3, -0.4, 1.1]])
ZT = np.array([[4.0, 1.0, 0.0, -2.0], [1.0, 1.0, 1.0, 1.0], [-3.0, 6.0, 0.5, 0.0]])


def _np_softmax(z):
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def _np_wttm(zs, zt, gamma):
    """(loss, d loss / d zs): U = sum p_t^gamma, p_hat = p_t^gamma / U, loss = mean_b U KL(p_hat || q)."""
    powered = _np_softmax(zt) ** gamma
    u = powered.sum(axis=1)
    p_hat = powered / u[:, None]
    q = _np_softmax(zs)
    kl = (p_hat * (np.log(p_hat) - np.log(q))).sum(axis=1)
    grad = u[:, None] * (q - p_hat) / len(zs)  # d KL(p || softmax(z)) / dz = softmax(z) - p
    return (u * kl).mean(), grad


def test_wttm_loss_and_gradient_match_numpy():
    for gamma in (0.2, 0.5):
        expected, expected_grad = _np_wttm(ZS, ZT, gamma)
        zs = torch.tensor(ZS, requires_grad=True)
        got = wttm_loss(zs, torch.tensor(ZT), gamma)
        assert expected > 0 and abs(got.item() - expected) < 1e-12
        got.backward()
        np.testing.assert_allclose(zs.grad.numpy(), expected_grad, rtol=0, atol=1e-12)


def test_wttm_zero_at_the_transformed_teacher_and_kd_at_gamma_one():
    zt = torch.tensor(ZT)
    # q = p_hat = softmax(gamma z_t): zero for z_s = gamma z_t plus any per-row constant
    assert wttm_loss(0.2 * zt + torch.tensor([[1.0], [-2.0], [0.5]]), zt, 0.2).item() < 1e-12
    assert wttm_loss(zt, zt, 0.2).item() > 0  # matching the untransformed teacher is not the target
    # gamma = 1: U = 1, plain KL(p_t || q), i.e. KD at T = 1
    assert wttm_loss(torch.tensor(ZS), zt, 1.0).item() == pytest.approx(kd_loss(torch.tensor(ZS), zt, 1.0).item())


def _out(logits):
    f = torch.zeros(logits.shape[0], 4, 2, 2)
    return logits, Features(stem=f, stages=[f], preact=[f], pooled=f.mean((2, 3)))


def test_defaults_terms_and_logit_only_reading():
    p = methods.params_class("wttm")()
    assert (p.ce_weight, p.wttm_weight, p.gamma) == (1.0, 4.0, 0.2)
    assert reads_teacher_logits_only("wttm")  # the teacher cache serves it, as kd and dkd
    torch.manual_seed(0)
    student, teacher = torch.nn.Linear(5, 4), torch.nn.Linear(5, 4)
    ctx = methods.MethodContext(student=student, teacher=teacher, num_classes=4, num_train=8)
    m = methods.create("wttm", methods.params_class("wttm")(ce_weight=0.5, wttm_weight=2.0, gamma=0.25), ctx)
    assert m.phases() == []
    assert_no_extra_parameters(m)
    x, y = torch.randn(8, 5), torch.randint(0, 4, (8,))
    zs, zt = student(x), teacher(x).detach()
    terms = m.losses(_out(zs), (zt, None), y, torch.arange(8), epoch=1)  # the cache's (logits, None)
    assert set(terms) == {"ce", "wttm"}
    assert terms["ce"].item() == pytest.approx(0.5 * torch.nn.functional.cross_entropy(zs, y).item())
    expected, _ = _np_wttm(zs.detach().double().numpy(), zt.double().numpy(), 0.25)
    assert terms["wttm"].item() == pytest.approx(2.0 * expected, rel=1e-5)
    for name, term in terms.items():
        grads = torch.autograd.grad(term, list(student.parameters()), retain_graph=True)
        assert sum(g.abs().sum() for g in grads) > 0, name


def test_one_step_updates_the_student():
    teacher, student = make_pair("resnet14", "resnet8")
    m = make_method("wttm", student, teacher)
    assert_step_updates_student(m, student, teacher, seed=1)
