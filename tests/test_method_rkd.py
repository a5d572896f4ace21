"""rkd: distance and angle terms against numpy, separate weighted terms, gradients, cross-family pair."""
import itertools

import numpy as np
import pytest
import torch

import methods
from method_helpers import (assert_no_extra_parameters, assert_step_updates_student, assert_terms_send_gradient,
                            make_method, make_pair, random_batch)
from methods.rkd import rkd_angle_loss, rkd_distance_loss


F_S = np.array([[0.0, 1.0, 2.0], [1.0, -1.0, 0.5], [3.0, 0.0, -2.0], [0.5, 0.5, 0.5]])
F_T = np.array([[1.0, 0.0], [0.0, 3.0], [-2.0, 1.0], [4.0, 4.0]])  # another width: relations only


def _huber(x):
    x = np.abs(x)
    return np.where(x < 1.0, 0.5 * x * x, x - 0.5).mean()


def _np_norm_dist(f):
    b = len(f)
    d = np.array([[np.sqrt(((f[i] - f[j]) ** 2).sum()) if i != j else 0.0 for j in range(b)] for i in range(b)])
    return d / d[d > 0].mean()


def _np_angles(f):
    b = len(f)
    out = np.zeros((b, b, b))
    for i, j, k in itertools.product(range(b), repeat=3):
        e_ij, e_ik = f[j] - f[i], f[k] - f[i]
        n_ij, n_ik = np.linalg.norm(e_ij), np.linalg.norm(e_ik)
        if n_ij > 0 and n_ik > 0:
            out[i, j, k] = e_ij @ e_ik / (n_ij * n_ik)
    return out


def test_distance_and_angle_losses_match_numpy():
    exp_d = _huber(_np_norm_dist(F_S) - _np_norm_dist(F_T))
    exp_a = _huber(_np_angles(F_S) - _np_angles(F_T))
    assert np.abs(_np_angles(F_S) - _np_angles(F_T)).max() > 1.0  # both Huber branches are exercised
    got_d = rkd_distance_loss(torch.tensor(F_S), torch.tensor(F_T)).item()
    got_a = rkd_angle_loss(torch.tensor(F_S), torch.tensor(F_T)).item()
    assert abs(got_d - exp_d) < 1e-9 and exp_d > 0.01
    assert abs(got_a - exp_a) < 1e-9 and exp_a > 0.01


def test_relations_are_invariant_to_scale_and_translation():
    t = torch.tensor(F_S)
    s = 3.0 * t + torch.tensor([1.0, -2.0, 5.0])  # same distances up to scale, same angles
    assert rkd_distance_loss(s, t).item() < 1e-12
    assert rkd_angle_loss(s, t).item() < 1e-12
    assert rkd_distance_loss(t[:, [1, 0, 2]] + t, t).item() > 1e-4  # a real change is seen


def test_defaults_are_the_reference_values():
    p = methods.params_class("rkd")()
    assert (p.ce_weight, p.feat_weight, p.distance_weight, p.angle_weight) == (1.0, 1.0, 25.0, 50.0)
    with pytest.raises(ValueError):
        methods.params_class("rkd")(angle_weight=-1.0)


def test_terms_are_weighted_and_each_sends_gradient_to_the_student():
    t, s = make_pair("resnet14", "resnet8")
    m = make_method("rkd", s, t, feat_weight=2.0)
    out_s, out_t, y = random_batch(s, t)
    terms = m.losses(out_s, out_t, y, torch.arange(4), epoch=1)
    assert set(terms) == {"ce", "rkd_dist", "rkd_angle"}
    f_s, f_t = out_s[1].pooled.detach(), out_t[1].pooled
    assert abs(terms["rkd_dist"].item() - 2.0 * 25.0 * rkd_distance_loss(f_s, f_t).item()) < 1e-5
    assert abs(terms["rkd_angle"].item() - 2.0 * 50.0 * rkd_angle_loss(f_s, f_t).item()) < 1e-5
    assert_terms_send_gradient(terms, s)
    assert_no_extra_parameters(m)


def test_cross_family_pair_runs_a_step():
    t, s = make_pair("vgg8", "MobileNetV2")  # 1280-d vs 512-d embeddings
    assert_step_updates_student(make_method("rkd", s, t), s, t)


def test_degenerate_batches_stay_finite():
    one = torch.randn(1, 8, requires_grad=True)
    assert torch.isfinite(rkd_distance_loss(one, torch.randn(1, 4)))  # no pair: no NaN mean
    same = torch.ones(3, 8, requires_grad=True)  # collapsed embedding
    loss = rkd_distance_loss(same, torch.randn(3, 4)) + rkd_angle_loss(same, torch.randn(3, 4))
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(same.grad).all()
