"""ce and kd: the loss on a tiny fixed input equals the formula computed independently (numpy); logit
standardisation (the ``standardize`` switch of every logit method) in value, gradient and invariance."""
import numpy as np
import torch

import methods
from methods.kd import kd_loss
from models.base import Features
from training.jobs import reads_teacher_logits_only


def _np_log_softmax(z):
    z = z - z.max(axis=1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=1, keepdims=True))


def test_kd_loss_matches_numpy():
    zs = np.array([[1.0, 2.0, 0.5], [0.0, -1.0, 3.0]])
    zt = np.array([[2.0, 1.0, 0.0], [1.0, 1.0, 1.0]])
    T = 4.0
    ls, lt = _np_log_softmax(zs / T), _np_log_softmax(zt / T)
    expected = (np.exp(lt) * (lt - ls)).sum(axis=1).mean() * T * T
    got = kd_loss(torch.tensor(zs), torch.tensor(zt), T).item()
    assert abs(got - expected) < 1e-9
    assert kd_loss(torch.tensor(zt), torch.tensor(zt), T).item() < 1e-12  # zero when they agree


def _out(logits):
    b = logits.shape[0]
    f = torch.zeros(b, 4, 2, 2)
    return logits, Features(stem=f, stages=[f], preact=[f], pooled=f.mean((2, 3)))


def test_kd_method_terms_are_weighted_and_send_gradient():
    torch.manual_seed(0)
    student = torch.nn.Linear(5, 3)
    teacher = torch.nn.Linear(5, 3)
    x = torch.randn(8, 5)
    y = torch.randint(0, 3, (8,))
    ctx = methods.MethodContext(student=student, teacher=teacher, num_classes=3, num_train=8)
    m = methods.create("kd", methods.params_class("kd")(T=2.0, ce_weight=0.25, kd_weight=0.75), ctx)
    zs, zt = student(x), teacher(x).detach()
    terms = m.losses(_out(zs), _out(zt), y, torch.arange(8), epoch=1)
    assert set(terms) == {"ce", "kd"}
    ce = -_np_log_softmax(zs.detach().numpy().astype(np.float64))[np.arange(8), y.numpy()].mean()
    assert abs(terms["ce"].item() - 0.25 * ce) < 1e-5
    assert abs(terms["kd"].item() - 0.75 * kd_loss(zs.detach(), zt, 2.0).item()) < 1e-6
    for name, term in terms.items():
        grads = torch.autograd.grad(term, list(student.parameters()), retain_graph=True)
        assert sum(g.abs().sum() for g in grads) > 0, name
    assert m.extra_parameter_count() == 0


def test_ce_needs_no_teacher_and_kd_does():
    student = torch.nn.Linear(5, 3)
    ctx = methods.MethodContext(student=student, teacher=None, num_classes=3, num_train=8)
    methods.create("ce", methods.params_class("ce")(), ctx)
    try:
        methods.create("kd", methods.params_class("kd")(), ctx)
    except methods.MethodNotApplicable as e:
        assert "needs a teacher" in str(e)
    else:
        raise AssertionError("kd without a teacher must be refused")


def _np_standardize(z):
    return (z - z.mean(axis=1, keepdims=True)) / (z.std(axis=1, ddof=1, keepdims=True) + 1e-7)


def test_standardized_kd_matches_numpy_in_value_and_student_gradient():
    """Sun et al.'s z-score before the softmax: KD's term on standardised logits, the CE on raw ones."""
    zs = np.array([[1.0, 2.0, 0.5, -1.0], [0.0, -1.0, 3.0, 0.2]])
    zt = np.array([[4.0, 1.0, 0.0, -2.0], [1.0, 2.0, 1.0, 0.0]])
    T, y = 2.0, torch.tensor([1, 2])

    def np_kd(zs_):
        ls, lt = _np_log_softmax(_np_standardize(zs_) / T), _np_log_softmax(_np_standardize(zt) / T)
        return (np.exp(lt) * (lt - ls)).sum(axis=1).mean() * T * T

    ctx = methods.MethodContext(student=torch.nn.Linear(2, 4), teacher=torch.nn.Linear(2, 4), num_classes=4,
                                num_train=2)
    m = methods.create("kd", methods.params_class("kd")(T=T, ce_weight=0.1, kd_weight=9.0, standardize=True), ctx)
    z = torch.tensor(zs, requires_grad=True)
    terms = m.losses(_out(z), (torch.tensor(zt), None), y, torch.arange(2), epoch=1)
    assert abs(terms["kd"].item() - 9.0 * np_kd(zs)) < 1e-9
    assert abs(terms["ce"].item() - 0.1 * torch.nn.functional.cross_entropy(torch.tensor(zs), y).item()) < 1e-12
    terms["kd"].backward()
    h = 1e-6  # central differences of the numpy loss
    numeric = np.zeros_like(zs)
    for i in np.ndindex(zs.shape):
        e = np.zeros_like(zs)
        e[i] = h
        numeric[i] = (np_kd(zs + e) - np_kd(zs - e)) / (2 * h)
    np.testing.assert_allclose(z.grad.numpy(), 9.0 * numeric, atol=1e-7)
    # The point of the z-score: a positive rescaling and shift of the student's logits changes nothing.
    shifted = m.losses(_out(3.0 * torch.tensor(zs) + 5.0), (torch.tensor(zt), None), y, torch.arange(2), epoch=1)
    assert abs(shifted["kd"].item() - terms["kd"].item()) < 1e-6


def test_every_logit_method_has_the_standardize_switch():
    logit_methods = [n for n in methods.names() if reads_teacher_logits_only(n)]
    assert {"kd", "dkd", "dist", "nkd", "wttm"} <= set(logit_methods)
    for name in logit_methods:
        assert methods.params_class(name)().standardize is False, name
        assert methods.params_class(name)(standardize=True).standardize is True, name
