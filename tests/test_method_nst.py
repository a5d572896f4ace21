"""nst: the poly-kernel MMD against explicit numpy loops, both Gram routes, gradients, a cross-family pair."""
import numpy as np
import pytest
import torch

from method_helpers import assert_no_extra_parameters, assert_terms_send_gradient, make_method, make_pair, random_batch
from methods.nst import nst_loss, poly2_kernel_mean


def _np_units(f):
    v = f.reshape(f.shape[0], f.shape[1], -1)
    return v / np.linalg.norm(v, axis=2, keepdims=True)


def _np_kernel_mean(x, y):
    """mean over b, i, j of (x[b,i] . y[b,j])^2, by explicit loops."""
    vals = [float(np.dot(x[b, i], y[b, j])) ** 2
            for b in range(x.shape[0]) for i in range(x.shape[1]) for j in range(y.shape[1])]
    return sum(vals) / len(vals)


def test_nst_loss_matches_explicit_mmd():
    rng = np.random.default_rng(1)
    fs = rng.normal(size=(2, 5, 2, 2))  # C_s^2 = 25 > N^2 = 16: the [B,N,N] Gram route for k(s,s)
    ft = rng.normal(size=(2, 2, 4, 4))  # teacher pooled 4x4 -> 2x2; C_s*C_t = 10 <= 16: the [B,Cs,Ct] route
    ft_pooled = ft.reshape(2, 2, 2, 2, 2, 2).mean(axis=(3, 5))
    s, t = _np_units(fs), _np_units(ft_pooled)
    expected = _np_kernel_mean(t, t) + _np_kernel_mean(s, s) - 2 * _np_kernel_mean(s, t)
    got = nst_loss(torch.tensor(fs), torch.tensor(ft)).item()
    assert abs(got - expected) < 1e-12
    assert expected > 1e-2
    assert abs(nst_loss(torch.tensor(ft), torch.tensor(3.0 * ft)).item()) < 1e-12  # same channel set


@pytest.mark.parametrize("cx,cy,n", [(3, 2, 4), (6, 7, 4), (2, 9, 3)])
def test_kernel_mean_both_routes(cx, cy, n):
    rng = np.random.default_rng(cx * 100 + cy)
    x, y = rng.normal(size=(2, cx, n)), rng.normal(size=(2, cy, n))
    assert poly2_kernel_mean(torch.tensor(x), torch.tensor(y)).item() == pytest.approx(_np_kernel_mean(x, y),
                                                                                        rel=1e-12)


def test_nst_terms_weighted_and_send_gradient():
    t, s = make_pair("resnet14", "resnet8")
    m = make_method("nst", s, t)
    assert (m.params.ce_weight, m.params.nst_weight) == (1.0, 50.0)
    s_out, t_out, y = random_batch(s, t)
    terms = m.losses(s_out, t_out, y, torch.arange(4), epoch=1)
    assert set(terms) == {"ce", "nst"}
    expected = 50.0 * sum(nst_loss(a, b).item() for a, b in zip(s_out[1].stages, t_out[1].stages))
    assert terms["nst"].item() == pytest.approx(expected, rel=1e-5)
    assert_terms_send_gradient(terms, s)
    assert_no_extra_parameters(m)


def test_nst_cross_family_resnet8x4_to_shufflev1():
    t, s = make_pair("resnet8x4", "ShuffleV1")  # 3 stages each; 128..256 vs 240..960 channels, 32/16/8 vs 16/8/4
    m = make_method("nst", s, t)
    s_out, t_out, y = random_batch(s, t, batch=2)
    terms = m.losses(s_out, t_out, y, torch.arange(2), epoch=1)
    total = sum(terms.values())
    assert torch.isfinite(total) and terms["nst"].item() > 0
    total.backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in s.stages[0].parameters())


@pytest.mark.parametrize("c,n", [(300, 400), (300, 4)])  # both routes; raw sums are 90000 > float16 max
def test_kernel_mean_float16_does_not_overflow(c, n):
    u = torch.nn.functional.normalize(torch.rand(n) + 0.1, dim=0)
    x = u.expand(1, c, n).half().contiguous()  # c identical unit rows: every (x_i . x_j)^2 = 1
    assert poly2_kernel_mean(x, x.clone()).item() == pytest.approx(1.0, abs=2e-3)
