"""cat_kd: the loss and its student gradient (map and head weight) against numpy, across channel counts and
grids; zero when the student's CAMs equal the teacher's; defaults; the weighted terms on a real pair; a
cross-family pair with different grids; the refusal of a head over other classes; a real update."""
import numpy as np
import pytest
import torch

import methods
import models
from method_helpers import (assert_no_extra_parameters, assert_step_updates_student, assert_terms_send_gradient,
                            make_method, make_pair, random_batch)
from methods.cat_kd import cat_loss


def _np_pool(a, r):
    b, n, h, w = a.shape
    return a.reshape(b, n, r, h // r, r, w // r).mean(axis=(3, 5))


def _np_cat(fs, ws, ft, wt, r, normalize):
    """(loss, d loss / d fs, d loss / d ws) by hand: CAMs, r x r average pooling, L2 per map, element-mean MSE."""
    a_s, a_t = np.einsum("nc,bchw->bnhw", ws, fs), np.einsum("nc,bchw->bnhw", wt, ft)
    m_s, m_t = _np_pool(a_s, r), _np_pool(a_t, r)
    norm_s = np.sqrt((m_s ** 2).sum(axis=(2, 3), keepdims=True))
    norm_t = np.sqrt((m_t ** 2).sum(axis=(2, 3), keepdims=True))
    p_s, p_t = (m_s / norm_s, m_t / norm_t) if normalize else (m_s, m_t)
    loss = ((p_s - p_t) ** 2).mean()
    g = 2 * (p_s - p_t) / p_s.size  # d loss / d p_s
    if normalize:  # d (m / |m|) / d m = (I - p p^T) / |m|
        g = (g - p_s * (p_s * g).sum(axis=(2, 3), keepdims=True)) / norm_s
    kh, kw = fs.shape[2] // r, fs.shape[3] // r
    g_a = np.repeat(np.repeat(g, kh, axis=2), kw, axis=3) / (kh * kw)  # back through the average pooling
    return loss, np.einsum("nc,bnhw->bchw", ws, g_a), np.einsum("bnhw,bchw->nc", g_a, fs)


def test_loss_and_student_gradient_match_numpy():
    rng = np.random.default_rng(0)
    # different channel counts (3 vs 6) and grids (4x4 vs 8x8); 5 classes
    fs, ws = rng.normal(size=(2, 3, 4, 4)), rng.normal(size=(5, 3))
    ft, wt = rng.normal(size=(2, 6, 8, 8)), rng.normal(size=(5, 6))
    for r in (1, 2, 4):
        for normalize in (False, True):
            expected, g_f, g_w = _np_cat(fs, ws, ft, wt, r, normalize)
            f, w = torch.tensor(fs, requires_grad=True), torch.tensor(ws, requires_grad=True)
            got = cat_loss(f, w, torch.tensor(ft), torch.tensor(wt), r, normalize)
            assert expected > 1e-3 and abs(got.item() - expected) < 1e-12, (r, normalize)
            got.backward()
            np.testing.assert_allclose(f.grad.numpy(), g_f, rtol=0, atol=1e-12)
            np.testing.assert_allclose(w.grad.numpy(), g_w, rtol=0, atol=1e-12)
    # the CAMs are not ReLU'd: the maps have negative cells, and the loss sees them
    assert (np.einsum("nc,bchw->bnhw", ws, fs) < 0).any()


def test_zero_when_the_student_cams_equal_the_teacher():
    rng = np.random.default_rng(1)
    ft, wt = torch.tensor(rng.normal(size=(2, 3, 8, 8))), torch.tensor(rng.normal(size=(5, 3)))
    # a 4x4 student with twice the channels whose CAMs are the teacher's, 2x2-averaged
    half = torch.nn.functional.avg_pool2d(ft, 2)
    fs, ws = torch.cat([half, half], dim=1), torch.cat([wt, wt], dim=1) / 2
    for r in (2, 4):
        for normalize in (False, True):
            assert cat_loss(fs, ws, ft, wt, r, normalize).item() < 1e-24, (r, normalize)
    # CAMs 3x the teacher's: zero only when each map is L2-normalised
    assert cat_loss(fs, 3 * ws, ft, wt, 2, normalize=True).item() < 1e-24
    assert cat_loss(fs, 3 * ws, ft, wt, 2, normalize=False).item() > 1e-3


def test_defaults():
    p = methods.params_class("cat_kd")()
    assert (p.ce_weight, p.cat_weight, p.cam_resolution, p.normalize) == (1.0, 15.0, 2, False)


@pytest.fixture
def pair():
    teacher, student = make_pair("resnet14", "resnet8")
    return teacher, student


def test_weighted_terms_on_a_pair(pair):
    teacher, student = pair
    m = make_method("cat_kd", student, teacher, ce_weight=0.5, cat_weight=3.0, cam_resolution=4, normalize=True)
    assert m.phases() == []
    assert_no_extra_parameters(m)
    out_s, out_t, y = random_batch(student, teacher, seed=2)
    terms = m.losses(out_s, out_t, y, torch.arange(4), epoch=1)
    assert set(terms) == {"ce", "cat"}
    assert terms["ce"].item() == pytest.approx(0.5 * torch.nn.functional.cross_entropy(out_s[0], y).item())
    as_np = lambda t: t.detach().double().numpy()  # noqa: E731
    expected, _, _ = _np_cat(as_np(out_s[1].stages[-1]), as_np(student.classifier.weight),
                             as_np(out_t[1].stages[-1]), as_np(teacher.classifier.weight), 4, True)
    assert terms["cat"].item() == pytest.approx(3.0 * expected, rel=1e-5)
    assert_terms_send_gradient(terms, student)
    sum(terms.values()).backward()
    assert all(q.grad is None for q in teacher.parameters())  # the teacher's map and head are detached


def test_cross_family_pair_with_different_grids():
    teacher, student = make_pair("resnet8", "MobileNetV2")  # 8x8 x 64 channels -> 2x2 x 1280 channels
    out_s, out_t, y = random_batch(student, teacher, batch=2, seed=3)
    assert out_t[1].stages[-1].shape[-1] == 8 and out_s[1].stages[-1].shape[-1] == 2
    for r in (1, 2):
        m = make_method("cat_kd", student, teacher, cam_resolution=r, normalize=True)
        terms = m.losses(out_s, out_t, y, torch.arange(2), epoch=1)
        assert terms["cat"].item() > 0
        assert_terms_send_gradient({"cat": terms["cat"]}, student)


def test_refuses_a_head_over_other_classes():
    teacher = models.create("resnet8", 100).eval()
    with pytest.raises(methods.MethodNotApplicable, match="cat_kd needs a Linear head over 10 classes on the teacher"):
        make_method("cat_kd", models.create("resnet8", 10), teacher)


def test_one_step_updates_the_student(pair):
    teacher, student = pair
    m = make_method("cat_kd", student, teacher)
    assert_step_updates_student(m, student, teacher, seed=1)
