"""feat_mse: pre-ReLU regression against numpy (pooling, preact not stages), gradients, connector rules and
count, a cross-family pair, and the two-phase protocol (phase parameters, freezing, CE-only main loss)."""
import numpy as np
import pytest
import torch
from torch import nn

import methods
from method_helpers import (assert_each_gets_gradient, assert_terms_send_gradient, grad_abs_sums, make_method,
                            make_pair, random_batch)
from methods.feat_mse import feat_mse_loss
from models.base import Features


def test_feat_mse_loss_matches_numpy():
    a, b = np.array([[1.0, -2.0], [0.5, 3.0]]), np.array([[0.0, 1.0], [0.5, -1.0]])
    assert feat_mse_loss(torch.tensor(a), torch.tensor(b)).item() == (1.0 + 9.0 + 0.0 + 16.0) / 4


def test_feat_mse_regresses_pooled_preact():
    t, s = make_pair("resnet14", "resnet8")  # 64 channels on both sides at the last stage: no connector
    m = make_method("feat_mse", s, t, feat_weight=2.0)
    assert isinstance(m.connector, nn.Identity) and m.extra_parameter_count() == 0
    rng = np.random.default_rng(4)
    pre_s, pre_t = rng.normal(size=(2, 64, 4, 4)), rng.normal(size=(2, 64, 2, 2))

    def out(pre):
        f = torch.tensor(pre, dtype=torch.float32)
        return torch.zeros(2, 10), Features(stem=f, stages=[f, f, f.relu()], preact=[f, f, f], pooled=f.mean((2, 3)))

    terms = m.losses(out(pre_s), out(pre_t), torch.tensor([0, 1]), torch.arange(2), epoch=1)
    assert set(terms) == {"ce", "feat"}
    pooled_s = pre_s.reshape(2, 64, 2, 2, 2, 2).mean(axis=(3, 5))  # student 4x4 -> the teacher's 2x2
    expected = 2.0 * ((pooled_s - pre_t) ** 2).mean()
    assert terms["feat"].item() == pytest.approx(expected, rel=1e-5)


def test_feat_mse_terms_send_gradient():
    t, s = make_pair("resnet14", "resnet8")
    m = make_method("feat_mse", s, t)
    p = m.params
    assert (p.stage, p.ce_weight, p.feat_weight, p.two_phase) == (-1, 1.0, 100.0, False)
    assert m.phases() == []
    s_out, t_out, y = random_batch(s, t)
    terms = m.losses(s_out, t_out, y, torch.arange(4), epoch=1)
    assert_terms_send_gradient(terms, s)


def test_feat_mse_cross_family_connector():
    t, s = make_pair("vgg8", "MobileNetV2")  # last preact: student (1280, 2, 2), teacher (512, 4, 4)
    m = make_method("feat_mse", s, t)
    conv, bn = m.connector
    assert (conv.in_channels, conv.out_channels, conv.kernel_size, conv.bias) == (1280, 512, (1, 1), None)
    assert m.extra_parameter_count() == 1280 * 512 + (4 * 512 + 1)
    s_out, t_out, y = random_batch(s, t, batch=2)
    terms = m.losses(s_out, t_out, y, torch.arange(2), epoch=1)
    assert torch.isfinite(sum(terms.values()))
    assert_each_gets_gradient(terms["feat"], m.named_parameters())
    with pytest.raises(methods.MethodNotApplicable, match="stage=4 does not exist in the teacher"):
        make_method("feat_mse", s, t, stage=4)


def test_feat_mse_two_phase_protocol():
    t, s = make_pair("resnet14", "resnet8")
    m = make_method("feat_mse", s, t, stage=1, two_phase=True, phase_epochs=3)
    named = dict(s.named_parameters())
    lower = {n for n in named if n.startswith(("stem.", "stages.0.", "stages.1."))}
    assert lower and lower != set(named)
    (phase,) = m.phases()
    assert (phase.name, phase.epochs, phase.lr, phase.weight_decay) == ("regress", 3, 0.05, 1e-4)
    assert {id(p) for p in phase.parameters} == {id(named[n]) for n in lower}  # identity connector: no extra
    for n, p in named.items():  # layers up to the analysed stage are frozen for the main training
        assert p.requires_grad == (n not in lower), n
    assert s.stem.bn in phase.train_modules and s.classifier not in phase.train_modules
    assert m in phase.train_modules

    s_out, t_out, y = random_batch(s, t)
    phase_terms = phase.losses(s_out, t_out, y, torch.arange(4), 1)
    assert set(phase_terms) == {"feat"}
    for p in phase.parameters:  # the trainer re-enables them for the phase
        p.requires_grad_(True)
    s_out = s(torch.randn(4, 3, 32, 32))
    grads = dict(zip(named, grad_abs_sums(m._phase_losses(s_out, t_out, y, None, 1)["feat"], named.values())))
    assert all(grads[n] == 0.0 for n in named if n not in lower)  # stage 2 and the head are untouched
    assert sum(grads[n] for n in lower) > 0
    assert set(m.losses(s_out, t_out, y, torch.arange(4), epoch=1)) == {"ce"}  # phase 2: CE only


def test_feat_mse_two_phase_with_connector_trains_it_in_the_phase():
    t, s = make_pair("resnet8x4", "resnet8")  # stage 1: 32 -> 128 channels, so a connector exists
    m = make_method("feat_mse", s, t, stage=1, two_phase=True, freeze_lower=False)
    assert all(p.requires_grad for p in s.parameters())
    (phase,) = m.phases()
    conn = {id(p) for p in m.connector.parameters()}
    assert conn and conn <= {id(p) for p in phase.parameters}
