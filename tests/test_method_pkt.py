"""pkt: the cosine-conditional KL against numpy, weighting, gradients, cross-family pair."""
import numpy as np
import pytest
import torch

import methods
from method_helpers import (assert_no_extra_parameters, assert_step_updates_student, assert_terms_send_gradient,
                            make_method, make_pair, random_batch)
from methods.pkt import pkt_loss


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


def test_defaults_are_the_reference_values():
    p = methods.params_class("pkt")()
    assert (p.ce_weight, p.pkt_weight, p.eps) == (1.0, 30000.0, 1e-7)
    with pytest.raises(ValueError):
        methods.params_class("pkt")(eps=0.0)


def test_terms_are_weighted_and_send_gradient_to_the_student():
    t, s = make_pair("resnet14", "resnet8")
    m = make_method("pkt", s, t)
    out_s, out_t, y = random_batch(s, t)
    terms = m.losses(out_s, out_t, y, torch.arange(4), epoch=1)
    assert set(terms) == {"ce", "pkt"}
    expected = 30000.0 * pkt_loss(out_s[1].pooled.detach(), out_t[1].pooled).item()
    assert abs(terms["pkt"].item() - expected) < 1e-4 * max(1.0, expected)
    assert_terms_send_gradient(terms, s)
    assert_no_extra_parameters(m)


def test_cross_family_pair_runs_a_step():
    t, s = make_pair("resnet8x4", "ShuffleV1")  # 960-d vs 256-d
    assert_step_updates_student(make_method("pkt", s, t), s, t)
