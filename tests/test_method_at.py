"""at: the pure loss against numpy, gradients through real zoo models, stage alignment, a cross-family pair."""
import numpy as np
import pytest
import torch

from method_helpers import assert_no_extra_parameters, assert_terms_send_gradient, make_method, make_pair, random_batch
from methods.at import at_loss
from methods.common import pair_from_end


def _np_at(f, p):
    q = (np.abs(f) ** p).mean(axis=1).reshape(f.shape[0], -1)
    return q / np.linalg.norm(q, axis=1, keepdims=True)


@pytest.mark.parametrize("p", [2.0, 3.0])
def test_at_loss_matches_numpy(p):
    rng = np.random.default_rng(0)
    fs = rng.normal(size=(2, 3, 2, 2))  # student 2x2: signed values, so |f|^p matters for p = 3
    ft = rng.normal(size=(2, 5, 4, 4))  # teacher 4x4: must be average-pooled to 2x2 first
    ft_pooled = ft.reshape(2, 5, 2, 2, 2, 2).mean(axis=(3, 5))
    expected = ((_np_at(fs, p) - _np_at(ft_pooled, p)) ** 2).mean()
    got = at_loss(torch.tensor(fs), torch.tensor(ft), p).item()
    assert abs(got - expected) < 1e-12
    assert expected > 1e-3
    assert at_loss(torch.tensor(ft), torch.tensor(2.0 * ft), p).item() < 1e-12  # scale-invariant, zero


def test_pair_from_end_aligns_deepest_stages():
    assert pair_from_end([1, 2, 3, 4, 5], ["a", "b", "c"]) == [(3, "a"), (4, "b"), (5, "c")]
    assert pair_from_end(["a", "b"], [1, 2, 3]) == [("a", 2), ("b", 3)]
    assert pair_from_end([1, 2], ["a", "b"]) == [(1, "a"), (2, "b")]


def test_at_terms_weighted_and_send_gradient():
    t, s = make_pair("resnet14", "resnet8")
    m = make_method("at", s, t)
    assert (m.params.p, m.params.ce_weight, m.params.at_weight) == (2.0, 1.0, 1000.0)
    s_out, t_out, y = random_batch(s, t)
    terms = m.losses(s_out, t_out, y, torch.arange(4), epoch=1)
    assert set(terms) == {"ce", "at"}
    by_stage = [at_loss(a, b, 2.0).item() for a, b in zip(s_out[1].stages, t_out[1].stages)]
    assert len(by_stage) == 3
    assert terms["at"].item() == pytest.approx(1000.0 * sum(by_stage), rel=1e-5)
    assert_terms_send_gradient(terms, s)
    assert_no_extra_parameters(m)  # no learnable parts


def test_at_cross_family_vgg8_to_mobilenetv2():
    t, s = make_pair("vgg8", "MobileNetV2")  # 4 teacher stages, 5 student stages: the last 4 are paired
    m = make_method("at", s, t, at_weight=1.0)
    s_out, t_out, y = random_batch(s, t, batch=2)
    terms = m.losses(s_out, t_out, y, torch.arange(2), epoch=1)
    expected = sum(at_loss(a, b).item() for a, b in zip(s_out[1].stages[1:], t_out[1].stages))
    assert terms["at"].item() == pytest.approx(expected, rel=1e-5)
    sum(terms.values()).backward()
    assert torch.isfinite(sum(terms.values()))
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in s.stages[1].parameters())
