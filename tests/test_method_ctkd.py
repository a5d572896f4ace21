"""ctkd: the KD loss at given temperatures and its student gradient against numpy; the gradient reversal (the
temperature's gradient is -lambda times d KD / d theta, by finite differences in numpy) for both variants; the
cosine curriculum; the temperature's range and start; the weighted terms, logit-only reading and
standardisation; the temperature through the epoch diagnostic and the real trainer; one update step."""
import math

import numpy as np
import pytest
import torch
from pydantic import ValidationError

import methods
from dataset.loader import Loader
from dataset.store import Split
from method_helpers import assert_step_updates_student, make_method, make_pair
from methods.ctkd import ctkd_loss, curriculum_lambda
from methods.logits import kd_loss
from models.base import Features
from training.jobs import reads_teacher_logits_only
from training.params import TrainParams
from training.trainer import fit, param_groups

ZS = np.array([[1.0, 2.0, 0.5, -1.0], [0.0, -1.0, 3.0, 0.2], [0.3, 0.3, -0.4, 1.1]])
ZT = np.array([[4.0, 1.0, 0.0, -2.0], [1.0, 1.0, 1.0, 1.0], [-3.0, 6.0, 0.5, 0.0]])


def _np_softmax(z):
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def _np_kd_rows(zs, zt, tau):
    """Per-sample tau_b^2 KL(softmax(zt/tau_b) || softmax(zs/tau_b)); ``tau`` of shape [B]."""
    p, q = _np_softmax(zt / tau[:, None]), _np_softmax(zs / tau[:, None])
    return tau**2 * (p * (np.log(p) - np.log(q))).sum(axis=1)


def _np_kd(zs, zt, tau):
    """(loss, d loss / d zs) at fixed temperatures: d/dz [tau^2 KL(p || softmax(z/tau))] = tau (q - p)."""
    p, q = _np_softmax(zt / tau[:, None]), _np_softmax(zs / tau[:, None])
    return _np_kd_rows(zs, zt, tau).mean(), tau[:, None] * (q - p) / len(zs)


def _np_dkd_dtau(zs, zt, tau, h=1e-6):
    """d (per-sample KD row / B) / d tau_b by central differences."""
    return (_np_kd_rows(zs, zt, tau + h) - _np_kd_rows(zs, zt, tau - h)) / (2 * h) / len(zs)


def _out(logits):
    f = torch.zeros(logits.shape[0], 4, 2, 2)
    return logits, Features(stem=f, stages=[f], preact=[f], pooled=f.mean((2, 3)))


def _linear_method(**params):
    torch.manual_seed(0)
    student, teacher = torch.nn.Linear(5, 4), torch.nn.Linear(5, 4)
    ctx = methods.MethodContext(student=student, teacher=teacher, num_classes=4, num_train=8)
    return methods.create("ctkd", methods.params_class("ctkd")(**params), ctx)


def test_kd_loss_and_student_gradient_match_numpy_at_fixed_temperatures():
    for tau in (np.array([4.0]), np.array([2.0, 7.5, 15.0])):
        expected, expected_grad = _np_kd(ZS, ZT, np.broadcast_to(tau, (3,)).copy())
        zs = torch.tensor(ZS, requires_grad=True)
        got = ctkd_loss(zs, torch.tensor(ZT), torch.tensor(tau))
        assert expected > 0 and abs(got.item() - expected) < 1e-12
        got.backward()
        np.testing.assert_allclose(zs.grad.numpy(), expected_grad, rtol=0, atol=1e-12)
    # one temperature for the batch: kd's loss at that T
    assert ctkd_loss(torch.tensor(ZS), torch.tensor(ZT), torch.tensor([4.0])).item() == pytest.approx(
        kd_loss(torch.tensor(ZS), torch.tensor(ZT), 4.0).item(), abs=1e-12)


def test_curriculum_is_the_cosine_from_lambda_min_to_lambda_max():
    assert curriculum_lambda(1, 0.0, 1.0, 10) == pytest.approx((1 - math.cos(math.pi / 10)) / 2)  # 0.0245
    assert curriculum_lambda(1, 0.0, 1.0, 10) == pytest.approx(0.024471741852423)
    assert curriculum_lambda(5, 0.0, 1.0, 10) == pytest.approx(0.5)
    assert curriculum_lambda(3, 0.0, 1.0, 10) == pytest.approx(0.206107373853763)
    assert curriculum_lambda(10, 0.0, 1.0, 10) == curriculum_lambda(11, 0.0, 1.0, 10) == pytest.approx(1.0)
    assert curriculum_lambda(240, 0.0, 1.0, 10) == pytest.approx(1.0)
    assert curriculum_lambda(5, 0.2, 0.8, 10) == pytest.approx(0.5)
    assert curriculum_lambda(2, 0.2, 0.8, 4) == pytest.approx(0.5)
    m = _linear_method()
    assert [m.curriculum(e) for e in (5, 10, 30)] == pytest.approx([0.5, 1.0, 1.0])


def test_global_temperature_gradient_is_reversed_and_scaled_by_lambda():
    """d kd / d theta is -lambda * kd_weight * d KD / d tau * d tau / d theta; the student's gradient is the plain
    KD gradient at the forward temperature."""
    m = _linear_method(kd_weight=2.0, global_init=0.25).double()  # 0.25: exact in float32
    sig = 1 / (1 + math.exp(-0.25))
    tau = 1.0 + 20.0 * sig
    for epoch in (3, 12):
        lam = curriculum_lambda(epoch, 0.0, 1.0, 10)
        m.zero_grad()
        zs = torch.tensor(ZS, requires_grad=True)
        terms = m.losses(_out(zs), (torch.tensor(ZT), None), torch.tensor([0, 1, 2]), torch.arange(3), epoch)
        terms["kd"].backward()
        taus = np.full(3, tau)
        expected, expected_grad = _np_kd(ZS, ZT, taus)
        assert terms["kd"].item() == pytest.approx(2.0 * expected, rel=1e-12)
        np.testing.assert_allclose(zs.grad.numpy(), 2.0 * expected_grad, rtol=0, atol=1e-12)
        dkd_dtau = _np_dkd_dtau(ZS, ZT, taus).sum()  # one tau shared by every row
        expected_theta = -lam * 2.0 * dkd_dtau * 20.0 * sig * (1 - sig)
        assert abs(dkd_dtau) > 1e-4  # a real test of the sign
        assert m.temperature.raw.grad.item() == pytest.approx(expected_theta, rel=1e-6)
        assert np.sign(m.temperature.raw.grad.item()) == -np.sign(dkd_dtau * 20 * sig * (1 - sig))


def test_instance_temperatures_are_per_sample_and_their_gradient_is_reversed():
    m = _linear_method(variant="instance", mlp_hidden=6, t_start=0.5, t_range=10.0).double()
    zs = torch.tensor(ZS, requires_grad=True)
    zt = torch.tensor(ZT)
    with torch.no_grad():  # the MLP's raw outputs, from [z_t, z_s]
        raw = m.temperature.mlp(torch.cat([zt, zs], dim=1)).squeeze(1).numpy()
    sig = 1 / (1 + np.exp(-raw))
    taus = 0.5 + 10.0 * sig
    assert len(set(np.round(taus, 8))) == 3  # one temperature per sample
    lam = curriculum_lambda(4, 0.0, 1.0, 10)
    terms = m.losses(_out(zs), (zt, None), torch.tensor([0, 1, 2]), torch.arange(3), epoch=4)
    terms["kd"].backward()
    expected, expected_grad = _np_kd(ZS, ZT, taus)
    assert terms["kd"].item() == pytest.approx(0.9 * expected, rel=1e-12)
    # the student's logits enter the MLP detached: its gradient is the fixed-temperature one
    np.testing.assert_allclose(zs.grad.numpy(), 0.9 * expected_grad, rtol=0, atol=1e-12)
    # d raw_b / d (last bias) = 1, so the bias gets -lambda * 0.9 * sum_b d KD / d tau_b * d tau_b / d raw_b
    dkd_draw = _np_dkd_dtau(ZS, ZT, taus) * 10.0 * sig * (1 - sig)
    bias_grad = m.temperature.mlp[2].bias.grad.item()
    assert bias_grad == pytest.approx(-lam * 0.9 * dkd_draw.sum(), rel=1e-6)
    assert abs(dkd_draw.sum()) > 1e-5 and np.sign(bias_grad) == -np.sign(dkd_draw.sum())


def test_temperature_range_start_and_bad_params():
    m = _linear_method()
    zs, zt = torch.tensor(ZS, dtype=torch.float32), torch.tensor(ZT, dtype=torch.float32)
    assert m.temperatures(zs, zt, 1).item() == pytest.approx(1 + 20 / (1 + math.exp(-1)), rel=1e-6)  # 15.62
    with torch.no_grad():
        m.temperature.raw.fill_(-50.0)
        assert m.temperatures(zs, zt, 1).item() == pytest.approx(1.0)
        m.temperature.raw.fill_(50.0)
        assert m.temperatures(zs, zt, 1).item() == pytest.approx(21.0)
    inst = _linear_method(variant="instance")
    with torch.no_grad():
        taus = inst.temperatures(100 * zs, -100 * zt, 1)  # saturates: the bounds, never beyond
    assert taus.shape == (3,) and bool(((taus >= 1.0) & (taus <= 21.0)).all())
    with pytest.raises(ValidationError, match="lambda_min"):
        methods.params_class("ctkd")(lambda_min=0.8, lambda_max=0.5)
    with pytest.raises(ValidationError, match="variant"):
        methods.params_class("ctkd")(variant="per_class")


def test_defaults_terms_parameters_standardisation_and_logit_only_reading():
    p = methods.params_class("ctkd")()
    assert (p.ce_weight, p.kd_weight, p.variant, p.t_start, p.t_range, p.global_init) == (0.1, 0.9, "global", 1, 20, 1)
    assert (p.lambda_min, p.lambda_max, p.curriculum_epochs, p.mlp_hidden, p.standardize) == (0, 1, 10, 128, False)
    assert reads_teacher_logits_only("ctkd")  # the teacher cache serves it, as kd
    m = _linear_method(ce_weight=0.5, standardize=True)
    assert m.phases() == [] and m.extra_parameter_count() == 1
    assert _linear_method(variant="instance", mlp_hidden=6).extra_parameter_count() == 8 * 6 + 6 + 6 + 1
    x, y = torch.randn(8, 5), torch.randint(0, 4, (8,))
    zs, zt = m.ctx.student(x), m.ctx.teacher(x).detach()
    terms = m.losses(_out(zs), (zt, None), y, torch.arange(8), epoch=1)  # the cache's (logits, None)
    assert set(terms) == {"ce", "kd"}
    assert terms["ce"].item() == pytest.approx(0.5 * torch.nn.functional.cross_entropy(zs, y).item())

    def z_score(z):
        return (z - z.mean(axis=1, keepdims=True)) / (z.std(axis=1, ddof=1, keepdims=True) + 1e-7)

    tau = np.full(8, 1 + 20 / (1 + math.exp(-1)))
    expected, _ = _np_kd(z_score(zs.detach().double().numpy()), z_score(zt.double().numpy()), tau)
    assert terms["kd"].item() == pytest.approx(0.9 * expected, rel=1e-5)
    for name, term in terms.items():
        grads = torch.autograd.grad(term, list(m.ctx.student.parameters()), retain_graph=True)
        assert sum(g.abs().sum() for g in grads) > 0, name


def test_epoch_diagnostics_report_the_mean_temperature_and_lambda_then_restart():
    m = _linear_method(variant="instance")
    assert m.epoch_diagnostics() == {}
    zs, zt = torch.randn(4, 4), torch.randn(4, 4)
    y = torch.tensor([0, 1, 2, 3])
    with torch.no_grad():
        expected = [m.temperatures(zs, zt, 5).mean().item(), m.temperatures(2 * zs, zt, 5).mean().item()]
    m.losses(_out(zs), (zt, None), y, torch.arange(4), epoch=5)
    m.losses(_out(2 * zs), (zt, None), y, torch.arange(4), epoch=5)
    diag = m.epoch_diagnostics()
    assert diag == pytest.approx({"ctkd/temperature": sum(expected) / 2, "ctkd/lambda": 0.5})
    assert m.epoch_diagnostics() == {}


def _loader(n, seed):
    g = np.random.default_rng(seed)
    split = Split(images=g.integers(0, 256, (n, 3, 32, 32), dtype=np.uint8), labels=g.integers(0, 10, n))
    return Loader(split, (0.5, 0.5, 0.5), (0.25, 0.25, 0.25), batch_size=4, device=torch.device("cpu"))


def test_trainer_trains_the_temperature_in_the_method_group_and_logs_it(tmp_path):
    t, s = make_pair("resnet14", "resnet8")
    m = make_method("ctkd", s, t, n_train=4)
    cfg = TrainParams(epochs=2, batch_size=4, lr=0.05, amp=False, augment=False, keep_epochs=[])
    groups = {g["name"]: g["params"] for g in param_groups(s, m, cfg)}
    assert [id(q) for q in groups["method"]] == [id(m.temperature.raw)]
    before = m.temperature.raw.item()
    result = fit(s, m, cfg, _loader(4, 0), _loader(4, 1), seed=0, work_dir=tmp_path, teacher=t)
    assert m.temperature.raw.item() != before
    assert [r["ctkd/lambda"] for r in result.history] == pytest.approx([curriculum_lambda(e, 0, 1, 10) for e in (1, 2)])
    assert all(1.0 < r["ctkd/temperature"] < 21.0 for r in result.history)
    assert result.history[0]["ctkd/temperature"] != result.history[1]["ctkd/temperature"]


@pytest.mark.parametrize("variant", ["global", "instance"])
def test_one_step_updates_the_student(variant):
    teacher, student = make_pair("resnet14", "resnet8")
    m = make_method("ctkd", student, teacher, variant=variant)
    assert_step_updates_student(m, student, teacher, train_method=True, seed=1)
