"""sp: the row-normalised batch-Gram loss against numpy, the last stage map, gradients, cross-family pair."""
import numpy as np
import pytest
import torch

import methods
import models
from methods.sp import sp_loss


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _np_sp(fs, ft):
    b = fs.shape[0]

    def g_hat(f):
        a = f.reshape(b, -1)
        g = np.array([[float(a[i] @ a[j]) for j in range(b)] for i in range(b)])
        return g / np.sqrt((g ** 2).sum(axis=1, keepdims=True))

    return ((g_hat(ft) - g_hat(fs)) ** 2).sum() / b ** 2


def test_sp_loss_matches_numpy():
    fs = np.arange(12, dtype=np.float64).reshape(3, 2, 2, 1) % 5 - 1.5  # [B=3, C=2, 2, 1]
    ft = np.array([[1.0, 0.0, 2.0], [0.5, 3.0, -1.0], [-2.0, 1.0, 1.0]]).reshape(3, 3, 1, 1)  # another shape
    expected = _np_sp(fs, ft)
    got = sp_loss(torch.tensor(fs), torch.tensor(ft)).item()
    assert expected > 1e-3 and abs(got - expected) < 1e-12
    assert sp_loss(torch.tensor(ft) * 4.0, torch.tensor(ft)).item() < 1e-12  # global scale cancels


def _ctx(student, teacher, n=16):
    return methods.MethodContext(student=student, teacher=teacher, num_classes=10, num_train=n, input_size=32,
                                 train_labels=torch.randint(0, 10, (n,)))


def test_defaults_are_the_spec_values():
    p = methods.params_class("sp")()
    assert (p.ce_weight, p.sp_weight) == (1.0, 3000.0)


def test_terms_use_the_last_map_and_send_gradient_to_the_student():
    torch.manual_seed(0)
    s, t = models.create("resnet8", 10), models.create("resnet14", 10).eval()
    m = methods.create("sp", methods.params_class("sp")(sp_weight=10.0), _ctx(s, t))
    x, y = torch.randn(4, 3, 32, 32), torch.randint(0, 10, (4,))
    out_s = s(x)
    with torch.no_grad():
        out_t = t(x)
    terms = m.losses(out_s, out_t, y, torch.arange(4), epoch=1)
    assert set(terms) == {"ce", "sp"}
    last = sp_loss(out_s[1].stages[-1].detach(), out_t[1].stages[-1]).item()
    shallow = sp_loss(out_s[1].stages[0].detach(), out_t[1].stages[0]).item()
    assert abs(terms["sp"].item() - 10.0 * last) < 1e-5 and abs(last - shallow) > 1e-6
    for name, term in terms.items():
        grads = torch.autograd.grad(term, list(s.parameters()), retain_graph=True, allow_unused=True)
        assert sum(float(g.abs().sum()) for g in grads if g is not None) > 0, name
    assert m.extra_parameter_count() == 0 and not list(m.parameters())


def test_cross_family_pair_runs_a_step():
    torch.manual_seed(0)
    s, t = models.create("MobileNetV2", 10), models.create("vgg8", 10).eval()  # 1280x2x2 vs 512x4x4
    m = methods.create("sp", methods.params_class("sp")(), _ctx(s, t))
    opt = torch.optim.SGD(s.parameters(), lr=0.01)
    x, y = torch.randn(4, 3, 32, 32), torch.randint(0, 10, (4,))
    before = [p.detach().clone() for p in s.parameters()]
    with torch.no_grad():
        out_t = t(x)
    loss = sum(m.losses(s(x), out_t, y, torch.arange(4), epoch=1).values())
    assert torch.isfinite(loss)
    loss.backward()
    opt.step()
    assert any(not torch.equal(b, p) for b, p in zip(before, s.parameters()))
