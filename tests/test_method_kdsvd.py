"""kdsvd: the loss against a numpy SVD, the truncated SVD backward against torch's, numerical safety on
degenerate maps, gradients through real models, channel-count applicability."""
import numpy as np
import pytest
import torch

import methods
from method_helpers import assert_no_extra_parameters, assert_terms_send_gradient, make_method, make_pair, random_batch
from methods.kdsvd import kdsvd_loss, top_right_singular


def _np_stage(f, n):
    """Top-n right singular vectors (sign: entries sum >= 0, L2-normalised) and L2-normalised values."""
    b, c = f.shape[:2]
    x = f.reshape(b, c, -1).transpose(0, 2, 1)  # [B, HW, C]
    vs, ss = [], []
    for xb in x:
        _, sv, vt = np.linalg.svd(xb, full_matrices=False)
        v = vt.T[:, :n]
        v = v * np.where(v.sum(axis=0) < 0, -1.0, 1.0)
        vs.append(v / np.linalg.norm(v, axis=0))
        ss.append(sv[:n] / np.linalg.norm(sv[:n]))
    return np.stack(vs), np.stack(ss)


def _np_kdsvd(feats_s, feats_t, k=1, extra=3):
    total, prev = 0.0, None
    for fs, ft in zip(feats_s, feats_t):
        vt, st = _np_stage(ft, k)
        vs, _ = _np_stage(fs, k + extra)
        aligned = np.zeros_like(vt)
        for b in range(len(vt)):
            for j in range(k):
                cos = vs[b].T @ vt[b][:, j]
                a = int(np.argmax(np.abs(cos)))
                aligned[b][:, j] = np.sign(cos[a]) * vs[b][:, a]
        ws, wt = aligned * st[:, None, :], vt * st[:, None, :]
        if prev is not None:
            ps, pt = prev
            for b in range(len(ws)):
                for c in range(ws.shape[1]):
                    for c2 in range(ps.shape[1]):
                        rs = np.exp(-(ws[b, c] - ps[b, c2]) ** 2 / 8)
                        rt = np.exp(-(wt[b, c] - pt[b, c2]) ** 2 / 8)
                        total += ((rs - rt) ** 2).sum()
        prev = (ws, wt)
    return total / feats_s[0].shape[0]


def test_kdsvd_loss_matches_numpy():
    rng = np.random.default_rng(0)
    # two stages, B=2: 5 channels on 3x2 positions, then 4 channels on 2x2 (student needs 4 vectors)
    fs = [rng.normal(size=(2, 5, 3, 2)), rng.normal(size=(2, 4, 2, 2))]
    ft = [rng.normal(size=(2, 5, 2, 2)), rng.normal(size=(2, 4, 1, 3))]  # spatial sizes may differ
    expected = _np_kdsvd(fs, ft)
    got = kdsvd_loss([torch.tensor(f) for f in fs], [torch.tensor(f) for f in ft]).item()
    assert expected > 1e-4 and abs(got - expected) < 1e-10
    # with K=2 both teacher vectors are matched and scaled by their normalised singular values
    assert abs(kdsvd_loss([torch.tensor(f) for f in fs], [torch.tensor(f) for f in ft], k=2).item()
               - _np_kdsvd(fs, ft, k=2)) < 1e-10


@pytest.mark.parametrize("m_rows, c", [(7, 4), (4, 7)])
def test_truncated_backward_equals_torch_svd_backward_when_well_conditioned(m_rows, c):
    torch.manual_seed(0)
    x = torch.randn(3, m_rows, c, dtype=torch.float64, requires_grad=True)
    r_v, r_s = torch.randn(3, c, 2, dtype=torch.float64), torch.randn(3, 2, dtype=torch.float64)
    v, s = top_right_singular(x, 2)
    g_ours, = torch.autograd.grad((v * r_v).sum() + (s * r_s).sum(), x)
    x2 = x.detach().clone().requires_grad_(True)
    _, s2, vh = torch.linalg.svd(x2, full_matrices=False)
    v2 = vh.transpose(1, 2)[:, :, :2]
    v2 = v2 * torch.where(v2.sum(1, keepdim=True) < 0, -1.0, 1.0).to(v2.dtype)
    assert torch.allclose(v, v2, atol=1e-12) and torch.allclose(s, s2[:, :2])
    g_torch, = torch.autograd.grad((v2 * r_v).sum() + (s2[:, :2] * r_s).sum(), x2)
    assert torch.allclose(g_ours, g_torch, atol=1e-10)


def test_degenerate_maps_give_finite_nonzero_gradient():
    torch.manual_seed(0)
    f_s = torch.relu(torch.randn(2, 8, 4, 4))
    f_s[:, :5] = 0.0  # dead channels: rank 3 < the 4 student vectors, repeated zero singular values
    f_s2 = torch.relu(torch.randn(2, 6, 2, 2))
    f_s2[1] = 0.0  # one sample all zero
    f_s.requires_grad_(True)
    f_s2.requires_grad_(True)
    f_t = [torch.relu(torch.randn(2, 8, 4, 4)), torch.relu(torch.randn(2, 6, 2, 2))]
    loss = kdsvd_loss([f_s, f_s2], f_t)
    g1, g2 = torch.autograd.grad(loss, [f_s, f_s2])
    assert torch.isfinite(loss) and loss > 0
    assert torch.isfinite(g1).all() and torch.isfinite(g2).all()
    assert g1.abs().sum() > 0
    v, s = top_right_singular(torch.full((1, 3, 2), float("nan")), 4)  # non-finite in: read as zeros
    assert v.shape == (1, 2, 4) and torch.isfinite(v).all() and not v[..., 2:].any() and not s.any()


def test_defaults_are_the_reference_values():
    p = methods.params_class("kdsvd")()
    assert (p.ce_weight, p.kdsvd_weight, p.k, p.student_extra) == (1.0, 1.0, 1, 3)


def test_terms_send_gradient_to_the_student():
    t, s = make_pair("resnet14", "resnet8")
    m = make_method("kdsvd", s, t, kdsvd_weight=2.0)
    out_s, out_t, y = random_batch(s, t)
    terms = m.losses(out_s, out_t, y, torch.arange(4), epoch=1)
    assert set(terms) == {"ce", "kdsvd"}
    expected = 2.0 * kdsvd_loss([f.detach() for f in out_s[1].stages], out_t[1].stages).item()
    assert expected > 0 and abs(terms["kdsvd"].item() - expected) < 1e-6 * max(1.0, expected)
    assert_terms_send_gradient(terms, s)  # finite, non-zero
    assert_no_extra_parameters(m)


def test_cross_family_pair_with_other_channel_counts_is_not_applicable():
    t, s = make_pair("vgg8", "MobileNetV2")
    with pytest.raises(methods.MethodNotApplicable, match="equal channel counts"):
        make_method("kdsvd", s, t)


def test_teacher_top_pair_matches_the_full_decomposition():
    from methods.kdsvd import _svd, _top_pair

    torch.manual_seed(0)
    for shape in [(4, 16, 32, 32), (4, 128, 16, 16), (4, 256, 8, 8)]:  # C < M, C ~ M, C > M
        f = torch.relu(torch.randn(*shape) + 0.2 * torch.randn(shape[0], shape[1], 1, 1))
        x = f.flatten(2).transpose(1, 2)
        s, v = _top_pair(x)
        s_ref, v_ref = _svd(x)
        torch.testing.assert_close(s[:, 0], s_ref[:, 0], rtol=1e-5, atol=0)
        assert ((v[..., 0] * v_ref[..., 0]).sum(dim=1) > 1 - 1e-6).all()  # same vector, same sign
