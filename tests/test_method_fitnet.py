"""fitnet: hint MSE against numpy, the ConvReg rules, gradients (student and regressor), parameter count,
cross-family pairs (transposed-conv branch, and an undefined shape pair)."""
import numpy as np
import pytest
import torch
from torch import nn

import methods
from method_helpers import assert_each_gets_gradient, assert_terms_send_gradient, make_method, make_pair, random_batch
from methods.common import conv_regressor
from methods.fitnet import hint_loss


def test_hint_loss_matches_numpy():
    a = np.array([[[[1.0, -2.0], [0.5, 3.0]]]])
    b = np.array([[[[0.0, 1.0], [0.5, -1.0]]]])
    expected = (1.0 + 9.0 + 0.0 + 16.0) / 4
    assert hint_loss(torch.tensor(a), torch.tensor(b)).item() == expected


@pytest.mark.parametrize("s_shape,t_shape,kind,kernel", [
    ((8, 16, 16), (12, 8, 8), nn.Conv2d, (3, 3)),            # H_s = 2 H_t: stride-2 3x3
    ((8, 8, 8), (12, 16, 16), nn.ConvTranspose2d, (4, 4)),   # 2 H_s = H_t: stride-2 4x4 transposed
    ((8, 8, 8), (12, 8, 8), nn.Conv2d, (1, 1)),              # same size: 1x1
    ((8, 8, 8), (12, 4, 4), nn.Conv2d, (3, 3)),              # 8 = 2*4: the stride-2 branch wins
    ((8, 8, 8), (12, 2, 2), nn.Conv2d, (7, 7)),              # otherwise: valid (1 + 8 - 2) conv
])
def test_conv_regressor_rules(s_shape, t_shape, kind, kernel):
    reg = conv_regressor(s_shape, t_shape)
    assert type(reg[0]) is kind and tuple(reg[0].kernel_size) == kernel
    assert isinstance(reg[1], nn.BatchNorm2d) and isinstance(reg[2], nn.ReLU)
    out = reg(torch.randn(2, *s_shape))
    assert tuple(out.shape[1:]) == t_shape and (out >= 0).all()
    assert len(conv_regressor(s_shape, t_shape, relu=False)) == 2


def test_conv_regressor_undefined():
    with pytest.raises(methods.MethodNotApplicable, match="4x4 student map onto a 16x16"):
        conv_regressor((8, 4, 4), (12, 16, 16))


def test_fitnet_terms_gradient_and_parameter_count():
    t, s = make_pair("resnet14", "resnet8")
    m = make_method("fitnet", s, t)
    assert (m.params.hint_stage, m.params.ce_weight, m.params.hint_weight) == (1, 1.0, 100.0)
    s_out, t_out, y = random_batch(s, t)
    terms = m.losses(s_out, t_out, y, torch.arange(4), epoch=1)
    assert set(terms) == {"ce", "hint"}
    reg = m.regressor(s_out[1].stages[1]).detach().numpy()
    f_t = t_out[1].stages[1].numpy()
    assert terms["hint"].item() == pytest.approx(100.0 * ((reg - f_t) ** 2).mean(), rel=1e-5)
    assert_terms_send_gradient(terms, s)
    assert_each_gets_gradient(terms["hint"], m.named_parameters())  # conv weight, bias, BN weight, BN bias
    # stage 1 of resnet8/resnet14: 32 -> 32 channels at 16x16: a 1x1 conv with bias, BN (w, b, mean, var, count)
    assert m.extra_parameter_count() == (32 * 32 + 32) + (4 * 32 + 1)


def test_fitnet_cross_family_transposed_branch():
    t, s = make_pair("resnet8x4", "ShuffleV1")  # stage 1: student (480, 8, 8) -> teacher (128, 16, 16)
    m = make_method("fitnet", s, t)
    assert isinstance(m.regressor[0], nn.ConvTranspose2d)
    assert m.extra_parameter_count() == (480 * 128 * 16 + 128) + (4 * 128 + 1)
    s_out, t_out, y = random_batch(s, t, batch=2)
    terms = m.losses(s_out, t_out, y, torch.arange(2), epoch=1)
    total = sum(terms.values())
    assert torch.isfinite(total)
    total.backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in s.stages[1].parameters())
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in m.parameters())


def test_fitnet_not_applicable_pairs():
    t, s = make_pair("resnet8", "MobileNetV2")  # last stage: student 2x2 vs teacher 8x8, no ConvReg
    with pytest.raises(methods.MethodNotApplicable, match="2x2 student map onto a 8x8"):
        make_method("fitnet", s, t, hint_stage=-1)
    with pytest.raises(methods.MethodNotApplicable, match="hint_stage=3 does not exist in the teacher"):
        make_method("fitnet", s, t, hint_stage=3)
