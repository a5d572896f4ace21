"""sp: the row-normalised batch-Gram loss against numpy, the last stage map, gradients, cross-family pair."""
import numpy as np
import torch

import methods
from method_helpers import (assert_no_extra_parameters, assert_step_updates_student, assert_terms_send_gradient,
                            make_method, make_pair, random_batch)
from methods.sp import sp_loss


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


def test_defaults_are_the_reference_values():
    p = methods.params_class("sp")()
    assert (p.ce_weight, p.sp_weight) == (1.0, 3000.0)


def test_terms_use_the_last_map_and_send_gradient_to_the_student():
    t, s = make_pair("resnet14", "resnet8")
    m = make_method("sp", s, t, sp_weight=10.0)
    out_s, out_t, y = random_batch(s, t)
    terms = m.losses(out_s, out_t, y, torch.arange(4), epoch=1)
    assert set(terms) == {"ce", "sp"}
    last = sp_loss(out_s[1].stages[-1].detach(), out_t[1].stages[-1]).item()
    shallow = sp_loss(out_s[1].stages[0].detach(), out_t[1].stages[0]).item()
    assert abs(terms["sp"].item() - 10.0 * last) < 1e-5 and abs(last - shallow) > 1e-6
    assert_terms_send_gradient(terms, s)
    assert_no_extra_parameters(m)


def test_cross_family_pair_runs_a_step():
    t, s = make_pair("vgg8", "MobileNetV2")  # 1280x2x2 vs 512x4x4
    assert_step_updates_student(make_method("sp", s, t), s, t)
