"""dkd: TCKD/NCKD against a plain-numpy evaluation of the formula, warm-up, gradients on real models."""
import numpy as np
import torch

from method_helpers import assert_no_extra_parameters, assert_terms_send_gradient, make_method, make_pair, random_batch
from methods.dkd import dkd_loss


def _np_dkd(zs, zt, y, T):
    """TCKD and NCKD written out from the definitions with explicit loops."""
    tckd = nckd = 0.0
    for b in range(len(y)):
        def probs(z):
            e = np.exp(z / T - (z / T).max())
            return e / e.sum()

        ps, pt = probs(zs[b]), probs(zt[b])
        g = y[b]
        bs, bt = np.array([ps[g], 1 - ps[g]]), np.array([pt[g], 1 - pt[g]])
        tckd += (bt * np.log(bt / bs)).sum()
        others = [j for j in range(len(zs[b])) if j != g]
        hs, ht = probs(zs[b][others]), probs(zt[b][others])
        nckd += (ht * np.log(ht / hs)).sum()
    B = len(y)
    return tckd / B * T * T, nckd / B * T * T


def test_dkd_loss_matches_numpy():
    zs = np.array([[1.0, 2.0, 0.5, -1.0], [0.0, -1.0, 3.0, 0.2], [0.3, 0.1, 0.0, 2.0]])
    zt = np.array([[2.0, 1.0, 0.0, 0.5], [1.0, 1.0, 1.0, -2.0], [-1.0, 0.5, 2.5, 1.0]])
    y = np.array([1, 2, 0])
    for T in (1.0, 4.0):
        exp_t, exp_n = _np_dkd(zs, zt, y, T)
        tckd, nckd = dkd_loss(torch.tensor(zs), torch.tensor(zt), torch.tensor(y), T)
        assert abs(tckd.item() - exp_t) < 1e-6 and abs(nckd.item() - exp_n) < 1e-6
        assert exp_t > 1e-3 and exp_n > 1e-3  # the fixture is not a degenerate all-zero case
    # identical logits: both parts vanish
    tckd, nckd = dkd_loss(torch.tensor(zt), torch.tensor(zt), torch.tensor(y), 4.0)
    assert tckd.item() < 1e-9 and nckd.item() < 1e-9


def test_dkd_decomposes_kd():
    # KL(p_t||p_s) = TCKD + (1 - p_t,g) * NCKD at T=1 (Zhao et al., Eq. 5)
    torch.manual_seed(0)
    zs, zt = torch.randn(1, 6, dtype=torch.float64), torch.randn(1, 6, dtype=torch.float64)
    y = torch.tensor([3])
    tckd, nckd = dkd_loss(zs, zt, y, 1.0)
    ps, pt = zs.softmax(1), zt.softmax(1)
    kl = (pt * (pt.log() - ps.log())).sum().item()
    assert abs(kl - (tckd.item() + (1 - pt[0, 3].item()) * nckd.item())) < 1e-10


def test_dkd_terms_weighted_warmed_up_and_send_gradient():
    t, s = make_pair("resnet14", "resnet8")
    m = make_method("dkd", s, t)
    p = m.params
    assert (p.ce_weight, p.alpha, p.beta, p.T, p.warmup) == (1.0, 1.0, 8.0, 4.0, 20)
    out_s, out_t, y = random_batch(s, t)
    tckd, nckd = dkd_loss(out_s[0].detach(), out_t[0], y, 4.0)
    terms = m.losses(out_s, out_t, y, torch.arange(4), epoch=5)
    assert set(terms) == {"ce", "tckd", "nckd"}
    assert abs(terms["tckd"].item() - 5 / 20 * 1.0 * tckd.item()) < 1e-6
    assert abs(terms["nckd"].item() - 5 / 20 * 8.0 * nckd.item()) < 1e-5
    late = m.losses(out_s, out_t, y, torch.arange(4), epoch=40)
    assert abs(late["nckd"].item() - 8.0 * nckd.item()) < 1e-5
    assert_terms_send_gradient(terms, s)
    assert_no_extra_parameters(m)


def test_dkd_cross_family_pair_runs():
    t, s = make_pair("vgg8", "ShuffleV1")
    m = make_method("dkd", s, t, beta=6.0)
    out_s, out_t, y = random_batch(s, t, batch=2)
    terms = m.losses(out_s, out_t, y, torch.arange(2), epoch=1)
    sum(terms.values()).backward()
    assert all(torch.isfinite(v) for v in terms.values())
    assert s.classifier.weight.grad.abs().sum() > 0
