"""vid: the Gaussian NLL against numpy, trainable variance (the mdistiller bug fixed), gradients,
parameter count, a cross-family pair."""
import math

import numpy as np
import pytest
import torch

import methods
from method_helpers import assert_each_gets_gradient, assert_terms_send_gradient, make_method, make_pair, random_batch
from methods.vid import vid_loss


def test_vid_loss_matches_numpy():
    rng = np.random.default_rng(2)
    mu, t = rng.normal(size=(2, 3, 2, 2)), rng.normal(size=(2, 3, 2, 2))
    var = np.array([0.5, 2.0, 5.0])
    expected = np.mean([0.5 * ((mu[b, c, h, w] - t[b, c, h, w]) ** 2 / var[c] + math.log(var[c]))
                        for b in range(2) for c in range(3) for h in range(2) for w in range(2)])
    got = vid_loss(torch.tensor(mu), torch.tensor(t), torch.tensor(var)).item()
    assert abs(got - expected) < 1e-12


def test_vid_terms_gradient_trainable_variance_and_count():
    t, s = make_pair("resnet14", "resnet8")
    m = make_method("vid", s, t)
    p = m.params
    assert (p.ce_weight, p.vid_weight, p.init_pred_var, p.eps) == (1.0, 1.0, 5.0, 1e-5)
    for reg in m.regressors:
        assert torch.allclose(reg.pred_var(), torch.full_like(reg.alpha, 5.0), atol=1e-6)
    s_out, t_out, y = random_batch(s, t)
    terms = m.losses(s_out, t_out, y, torch.arange(4), epoch=1)
    assert set(terms) == {"ce", "vid"}
    # value: stage by stage with numpy, from the regressor means and sigma^2 = 5
    expected = 0.0
    for reg, f_s, f_t in zip(m.regressors, s_out[1].stages, t_out[1].stages):
        mu = reg(f_s).detach().numpy()
        expected += (0.5 * ((mu - f_t.numpy()) ** 2 / 5.0 + math.log(5.0))).mean()
    assert terms["vid"].item() == pytest.approx(expected, rel=1e-5)
    assert_terms_send_gradient(terms, s)
    # the variance parameters are registered, receive gradient and are moved by the optimiser
    own = dict(m.named_parameters())
    assert {f"regressors.{i}.alpha" for i in range(3)} <= set(own)
    assert "regressors.0.alpha" in m.state_dict()
    assert_each_gets_gradient(terms["vid"], own.items())
    opt = torch.optim.SGD(m.parameters(), lr=0.1)
    before = m.regressors[2].alpha.detach().clone()
    terms["vid"].backward()
    opt.step()
    assert not torch.equal(before, m.regressors[2].alpha.detach())
    # stages 16/32/64 channels on both sides: three bias-free 1x1 convs (C*C each) + C alphas per stage
    assert m.extra_parameter_count() == sum(3 * c * c + c for c in (16, 32, 64))


def test_vid_rejects_variance_below_eps():
    with pytest.raises(ValueError, match="init_pred_var must exceed eps"):
        methods.params_class("vid")(init_pred_var=1e-6, eps=1e-5)


def test_vid_cross_family_vgg8_to_mobilenetv2():
    t, s = make_pair("vgg8", "MobileNetV2")  # teacher 4 stages (128..512 ch), student 5: the last 4 are paired
    m = make_method("vid", s, t)
    pairs = [(16, 128), (48, 256), (160, 512), (1280, 512)]
    assert [(r.net[0].in_channels, r.net[-1].out_channels) for r in m.regressors] == pairs
    s_out, t_out, y = random_batch(s, t, batch=2)
    terms = m.losses(s_out, t_out, y, torch.arange(2), epoch=1)
    total = sum(terms.values())
    assert torch.isfinite(total)
    total.backward()
    assert all(r.alpha.grad is not None and r.alpha.grad.abs().sum() > 0 for r in m.regressors)
