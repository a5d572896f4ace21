"""ofd: margins and the partial L2 against hand formulas, margin buffers from the teacher's BN, stage
weights, gradients (student and connectors), parameter count, cross-family pairs."""
import math

import numpy as np
import pytest
import torch

import methods
from method_helpers import assert_each_gets_gradient, assert_terms_send_gradient, make_method, make_pair, random_batch
from methods.ofd import ofd_loss, ofd_margin
from models.base import Features


def _margin(gamma, beta):
    s, m = abs(gamma), beta
    cdf = 0.5 * (1 + math.erf(-m / s / math.sqrt(2)))
    pdf = math.exp(-((m / s) ** 2) / 2) / math.sqrt(2 * math.pi)
    return m - s * pdf / cdf if cdf > 1e-3 else -3 * s


def test_ofd_margin_matches_formula():
    gamma = [1.0, 0.5, -2.0, 1.0, 0.3]
    beta = [0.0, 0.2, -1.0, 4.0, -0.1]  # 4th: Phi(-4) = 3e-5 < 1e-3 -> -3s
    got = ofd_margin(torch.tensor(gamma, dtype=torch.float64), torch.tensor(beta, dtype=torch.float64))
    expected = [_margin(g, b) for g, b in zip(gamma, beta)]
    assert got.tolist() == pytest.approx(expected, rel=1e-10)
    assert expected[0] == pytest.approx(-math.sqrt(2 / math.pi))  # E[x | x<0], x ~ N(0,1)
    assert expected[3] == -3.0 and all(v < 0 for v in expected)


def test_ofd_loss_matches_case_analysis():
    rng = np.random.default_rng(3)
    s, t = rng.normal(size=(2, 2, 3, 3)), rng.normal(size=(2, 2, 3, 3))
    margin = np.array([-0.5, -1.2])
    total = 0.0
    for b, c, h, w in np.ndindex(s.shape):
        sv, tv, mv = s[b, c, h, w], t[b, c, h, w], margin[c]
        if sv > mv and tv <= mv:
            total += (sv - mv) ** 2
        elif sv > tv and mv < tv <= 0:
            total += (sv - tv) ** 2
        elif tv > 0:
            total += (sv - tv) ** 2
    expected = total / 2  # sum over C,H,W; mean over B
    got = ofd_loss(torch.tensor(s), torch.tensor(t), torch.tensor(margin)).item()
    assert abs(got - expected) < 1e-12 and expected > 0


def test_ofd_margin_buffers_come_from_teacher_bn():
    teacher, student = make_pair("resnet14", "resnet8")
    last_bn = teacher.bn_before_relu()[-1]
    with torch.no_grad():
        last_bn.weight.fill_(1.0)
        last_bn.bias.fill_(0.0)
        last_bn.weight[0], last_bn.bias[0] = 0.5, 2.0  # Phi(-4) < 1e-3 -> -1.5
    m = make_method("ofd", student, teacher)
    margins = m.margins()
    assert [x.numel() for x in margins] == [16, 32, 64]
    assert margins[2][0].item() == pytest.approx(-1.5)
    assert margins[2][1:].tolist() == pytest.approx([-math.sqrt(2 / math.pi)] * 63, rel=1e-6)


def test_ofd_stage_weights():
    """Identity connectors, teacher map 0: stage i contributes sum(s^2)/B / 2^(n-1-i)."""
    teacher, student = make_pair("resnet14", "resnet8")
    m = make_method("ofd", student, teacher, ofd_weight=1.0).eval()
    for conn in m.connectors:
        c = conn[0].weight.shape[0]
        with torch.no_grad():
            conn[0].weight.copy_(torch.eye(c).view(c, c, 1, 1))
    shapes, amps = [(16, 32, 32), (32, 16, 16), (64, 8, 8)], [1.0, 2.0, 3.0]
    s = [torch.full((2, *sh), a) for sh, a in zip(shapes, amps)]
    t = [torch.zeros(2, *sh) for sh in shapes]
    logits = torch.zeros(2, 10)

    def out(f):
        return logits, Features(stem=f[0], stages=f, preact=f, pooled=f[-1].mean((2, 3)))

    terms = m.losses(out(s), out(t), torch.tensor([0, 1]), torch.arange(2), epoch=1)
    bn_scale = 1 / (1 + 1e-5)  # eval BN with unit running var
    expected = sum(a * a * bn_scale * np.prod(sh) / 2 ** (2 - i) for i, (sh, a) in enumerate(zip(shapes, amps)))
    assert terms["ofd"].item() == pytest.approx(expected, rel=1e-5)


def test_ofd_terms_gradient_and_parameter_count():
    teacher, student = make_pair("resnet14", "resnet8")
    m = make_method("ofd", student, teacher)
    assert (m.params.ce_weight, m.params.ofd_weight) == (1.0, 1e-3)
    s_out, t_out, y = random_batch(student, teacher)
    terms = m.losses(s_out, t_out, y, torch.arange(4), epoch=1)
    assert set(terms) == {"ce", "ofd"}
    assert_terms_send_gradient(terms, student)
    assert_each_gets_gradient(terms["ofd"], m.named_parameters())
    assert not any(p is q for p in m.parameters() for q in teacher.parameters())
    # per stage (C = 16, 32, 64 both sides): 1x1 conv C*C, BN weight/bias/mean/var (4C) + count (1), margin C
    assert m.extra_parameter_count() == sum(c * c + 4 * c + 1 + c for c in (16, 32, 64))


def test_ofd_cross_family_and_not_applicable():
    # WRN exposes 4 preact stages but its tap repeats group 3's (same final BN): 3 distinct, as the reference
    teacher, student = make_pair("wrn_40_2", "ShuffleV1")
    m = make_method("ofd", student, teacher)
    assert m.pairs == [(0, 0), (1, 1), (2, 2)]
    assert [(c[0].in_channels, c[0].out_channels) for c in m.connectors] == [(240, 32), (480, 64), (960, 128)]
    s_out, t_out, y = random_batch(student, teacher, batch=2)
    terms = m.losses(s_out, t_out, y, torch.arange(2), epoch=1)
    total = sum(terms.values())
    assert torch.isfinite(total)
    total.backward()
    assert all(p.grad is not None for p in m.connectors.parameters())

    def no_bns():
        raise NotImplementedError("no pre-ReLU BNs here")

    teacher.bn_before_relu = no_bns
    with pytest.raises(methods.MethodNotApplicable, match="pre-ReLU BatchNorms"):
        make_method("ofd", student, teacher)


def test_ofd_wrn_pair_skips_the_repeated_tap_preact():
    teacher, student = make_pair("wrn_40_2", "wrn_16_2")
    m = make_method("ofd", student, teacher)
    assert m.pairs == [(0, 0), (1, 1), (2, 2)]
    assert [x.numel() for x in m.margins()] == [32, 64, 128]
    # 4 teacher stages, 5 distinct student stages: the deepest 4 paired
    teacher, student = make_pair("vgg8", "MobileNetV2")
    assert make_method("ofd", student, teacher).pairs == [(1, 0), (2, 1), (3, 2), (4, 3)]
