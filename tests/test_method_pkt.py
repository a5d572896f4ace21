"""pkt: the cosine-conditional KL against numpy, weighting, gradients, cross-family pair."""
import numpy as np
import pytest
import torch

import methods
import models
from methods.pkt import pkt_loss


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


F_S = np.array([[1.0, 2.0, 0.0], [0.0, 1.0, -1.0], [3.0, -1.0, 2.0]])
F_T = np.array([[2.0, 0.5], [-1.0, 1.0], [0.0, 4.0]])


def _np_conditionals(f, eps):
    p = np.zeros((len(f), len(f)))
    for i in range(len(f)):
        for j in range(len(f)):
            a = f[i] / (np.sqrt((f[i] ** 2).sum()) + eps)
            b = f[j] / (np.sqrt((f[j] ** 2).sum()) + eps)
            p[i, j] = (float(a @ b) + 1.0) / 2.0
    return p / p.sum(axis=1, keepdims=True)


def test_pkt_loss_matches_numpy():
    eps = 1e-7
    ps, pt = _np_conditionals(F_S, eps), _np_conditionals(F_T, eps)
    expected = sum(pt[i, j] * np.log((pt[i, j] + eps) / (ps[i, j] + eps)) for i in range(3) for j in range(3)) / 9
    got = pkt_loss(torch.tensor(F_S), torch.tensor(F_T)).item()
    assert expected > 1e-3 and abs(got - expected) < 1e-12


def test_pkt_is_zero_for_equal_directions_and_positive_otherwise():
    t = torch.tensor(F_S)
    assert abs(pkt_loss(t * torch.tensor([[2.0], [0.5], [7.0]]), t).item()) < 1e-9  # per-sample scale
    assert pkt_loss(t.flip(0), t).item() > 1e-4


def _ctx(student, teacher, n=16):
    return methods.MethodContext(student=student, teacher=teacher, num_classes=10, num_train=n, input_size=32,
                                 train_labels=torch.randint(0, 10, (n,)))


def test_defaults_are_the_spec_values():
    p = methods.params_class("pkt")()
    assert (p.ce_weight, p.pkt_weight, p.eps) == (1.0, 30000.0, 1e-7)
    with pytest.raises(ValueError):
        methods.params_class("pkt")(eps=0.0)


def test_terms_are_weighted_and_send_gradient_to_the_student():
    torch.manual_seed(0)
    s, t = models.create("resnet8", 10), models.create("resnet14", 10).eval()
    m = methods.create("pkt", methods.params_class("pkt")(), _ctx(s, t))
    x, y = torch.randn(4, 3, 32, 32), torch.randint(0, 10, (4,))
    out_s = s(x)
    with torch.no_grad():
        out_t = t(x)
    terms = m.losses(out_s, out_t, y, torch.arange(4), epoch=1)
    assert set(terms) == {"ce", "pkt"}
    expected = 30000.0 * pkt_loss(out_s[1].pooled.detach(), out_t[1].pooled).item()
    assert abs(terms["pkt"].item() - expected) < 1e-4 * max(1.0, expected)
    for name, term in terms.items():
        grads = torch.autograd.grad(term, list(s.parameters()), retain_graph=True, allow_unused=True)
        assert sum(float(g.abs().sum()) for g in grads if g is not None) > 0, name
    assert m.extra_parameter_count() == 0 and not list(m.parameters())


def test_cross_family_pair_runs_a_step():
    torch.manual_seed(0)
    s, t = models.create("ShuffleV1", 10), models.create("resnet8x4", 10).eval()  # 960-d vs 256-d
    m = methods.create("pkt", methods.params_class("pkt")(), _ctx(s, t))
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
