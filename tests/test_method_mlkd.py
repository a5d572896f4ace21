"""mlkd: each level (instance, batch Gram, class correlation) and the confidence masks against numpy, the
weighted terms and the student's gradient on both views against numpy, standardisation on the instance
terms only, the defaults, and a real training through the trainer with the strong view."""
import numpy as np
import pytest
import torch

import methods
import models
from dataset.augment import STRONG
from dataset.store import Split, in_memory
from methods.base import ViewOutputs
from methods.mlkd import batch_alignment, class_alignment, confidence_weights, instance_alignment
from training.fitter import new_student
from training.jobs import reads_teacher_logits_only, train_network
from training.params import TrainParams

RNG = np.random.default_rng(0)
B, N = 5, 5  # odd: the masks then keep 3 of 5, not a half
ZS, ZT = RNG.normal(0, 2, (B, N)), RNG.normal(0, 3, (B, N))  # standard view: student, teacher
SS, ST = RNG.normal(0, 2, (B, N)), RNG.normal(0, 3, (B, N))  # strong view
TEMPS = [2.0, 3.0, 4.0, 5.0, 6.0]


def _softmax(z):
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def _through_softmax(q, g, t):
    """d/dz of a loss with gradient g in q = softmax(z / t)."""
    return q * (g - (g * q).sum(axis=1, keepdims=True)) / t


def _np_instance(zs, zt, temps):
    """(Σ_T T² mean_b KL(q_t || q_s), its gradient in zs: Σ_T T (q_s - q_t) / B)."""
    value, grad = 0.0, np.zeros_like(zs)
    for t in temps:
        qs, qt = _softmax(zs / t), _softmax(zt / t)
        value += t * t * (qt * (np.log(qt) - np.log(qs))).sum(axis=1).mean()
        grad += t * (qs - qt) / len(zs)
    return value, grad


def _np_batch(zs, zt, temps):
    """(Σ_T ||Q_s Q_sᵀ - Q_t Q_tᵀ||² / B, gradient: dL/dQ_s = 4 G Q_s / B)."""
    value, grad = 0.0, np.zeros_like(zs)
    for t in temps:
        qs, qt = _softmax(zs / t), _softmax(zt / t)
        g = qs @ qs.T - qt @ qt.T
        value += (g ** 2).sum() / len(zs)
        grad += _through_softmax(qs, 4 * g @ qs / len(zs), t)
    return value, grad


def _np_class(zs, zt, temps):
    """(Σ_T ||Q_sᵀ Q_s - Q_tᵀ Q_t||² / N, gradient: dL/dQ_s = 4 Q_s H / N)."""
    value, grad = 0.0, np.zeros_like(zs)
    for t in temps:
        qs, qt = _softmax(zs / t), _softmax(zt / t)
        h = qs.T @ qs - qt.T @ qt
        value += (h ** 2).sum() / zs.shape[1]
        grad += _through_softmax(qs, 4 * qs @ h / zs.shape[1], t)
    return value, grad


def _np_masks(zt):
    """The authors' masks as they act: the share of samples (classes) at or below the median confidence."""
    p = _softmax(zt)
    confidence, per_class = p.max(axis=1), p.sum(axis=0)
    return (confidence <= np.percentile(confidence, 50)).mean(), (per_class <= np.percentile(per_class, 50)).mean()


@pytest.mark.parametrize("level, reference", [(instance_alignment, _np_instance), (batch_alignment, _np_batch),
                                              (class_alignment, _np_class)])
def test_each_level_and_its_gradient_match_numpy(level, reference):
    expected, expected_grad = reference(ZS, ZT, TEMPS)
    zs = torch.tensor(ZS, requires_grad=True)
    got = level(zs, torch.tensor(ZT), TEMPS)
    assert expected > 0 and got.item() == pytest.approx(expected, rel=1e-12)
    got.backward()
    np.testing.assert_allclose(zs.grad.numpy(), expected_grad, rtol=0, atol=1e-12)
    assert level(torch.tensor(ZT), torch.tensor(ZT), TEMPS).item() < 1e-12  # zero when they agree


def test_confidence_masks_keep_the_share_at_or_below_the_median():
    m_b, m_n = confidence_weights(torch.tensor(ZT))
    assert (m_b.item(), m_n.item()) == pytest.approx(_np_masks(ZT))
    assert _np_masks(ZT) == pytest.approx((0.6, 0.6))
    # confidences 0.9, 0.8, 0.8, 0.3, 0.2: median 0.8, and "at or below" keeps 4 of 5 ("above" would keep 3)
    confident = torch.log(torch.tensor([[0.9, 0.1], [0.8, 0.2], [0.8, 0.2], [0.3, 0.7], [0.2, 0.8]]))
    assert confidence_weights(confident)[0].item() == pytest.approx(0.8)


def _out(logits):
    return logits, None  # the teacher cache's output form; mlkd reads logits only


def _method(student, teacher, **params):
    ctx = methods.MethodContext(student=student, teacher=teacher, num_classes=N, num_train=B)
    return methods.create("mlkd", methods.params_class("mlkd")(**params), ctx)


def test_weighted_terms_and_the_student_gradient_on_both_views_match_numpy():
    y = torch.tensor([0, 1, 2, 3, 4])
    m = _method(torch.nn.Linear(2, N), torch.nn.Linear(2, N), ce_weight=0.3, kd_weight=0.7, temperatures=[1.5, 4.0])
    zw, zs = torch.tensor(ZS, requires_grad=True), torch.tensor(SS, requires_grad=True)
    terms = m.losses(_out(zw), _out(torch.tensor(ZT)), y, torch.arange(B), epoch=1,
                     views={STRONG: ViewOutputs(_out(zs), _out(torch.tensor(ST)))})
    assert set(terms) == {"ce", "ce_strong", "instance", "instance_strong", "batch", "class"}
    temps, m_b, m_n = [1.5, 4.0], *_np_masks(ZT)
    onehot = np.eye(N)[y.numpy()]
    ce = [(-np.log(_softmax(z)) * onehot).sum(axis=1).mean() for z in (ZS, SS)]
    (iw, iw_g), (is_, is_g) = _np_instance(ZS, ZT, temps), _np_instance(SS, ST, temps)
    (bw, bw_g), (cw, cw_g) = _np_batch(ZS, ZT, temps), _np_class(ZS, ZT, temps)
    expected = {"ce": 0.3 * ce[0], "ce_strong": 0.3 * ce[1], "instance": 0.7 * m_b * iw, "instance_strong": 0.7 * is_,
                "batch": 0.7 * m_b * bw, "class": 0.7 * m_n * cw}
    for name, value in expected.items():
        assert terms[name].item() == pytest.approx(value, rel=1e-12), name
    sum(terms.values()).backward()
    np.testing.assert_allclose(zw.grad.numpy(), 0.3 * (_softmax(ZS) - onehot) / B
                               + 0.7 * (m_b * iw_g + m_b * bw_g + m_n * cw_g), rtol=0, atol=1e-12)
    np.testing.assert_allclose(zs.grad.numpy(), 0.3 * (_softmax(SS) - onehot) / B + 0.7 * is_g, rtol=0, atol=1e-12)


def _np_standardize(z):
    return (z - z.mean(axis=1, keepdims=True)) / (z.std(axis=1, ddof=1, keepdims=True) + 1e-7)


def test_standardize_z_scores_the_instance_terms_only():
    """As Sun et al.'s MLKD code: the KL terms on z-scored logits; Gram matrices, masks and CE on raw ones."""
    y = torch.tensor([0, 1, 2, 3, 4])
    plain, scored = (_method(torch.nn.Linear(2, N), torch.nn.Linear(2, N), standardize=s) for s in (False, True))
    args = (_out(torch.tensor(ZS)), _out(torch.tensor(ZT)), y, torch.arange(B))
    views = {STRONG: ViewOutputs(_out(torch.tensor(SS)), _out(torch.tensor(ST)))}
    a, b = plain.losses(*args, epoch=1, views=views), scored.losses(*args, epoch=1, views=views)
    m_b = _np_masks(ZT)[0]
    assert b["instance"].item() == pytest.approx(0.9 * m_b * _np_instance(_np_standardize(ZS), _np_standardize(ZT),
                                                                           TEMPS)[0], rel=1e-9)
    assert b["instance_strong"].item() == pytest.approx(
        0.9 * _np_instance(_np_standardize(SS), _np_standardize(ST), TEMPS)[0], rel=1e-9)
    for name in ("ce", "ce_strong", "batch", "class"):
        assert b[name].item() == a[name].item(), name


def test_defaults_views_and_logit_only_reading():
    p = methods.params_class("mlkd")()
    assert (p.ce_weight, p.kd_weight, p.temperatures, p.standardize) == (0.1, 0.9, [2.0, 3.0, 4.0, 5.0, 6.0], False)
    assert methods.get("mlkd").extra_views == ("strong",)
    assert methods.get("mlkd").task_terms == {"ce", "ce_strong"}  # the labels' terms, for an optimiser like DOT
    assert reads_teacher_logits_only("mlkd")  # the teacher cache serves it when it holds the strong view
    with pytest.raises(ValueError, match="temperatures"):
        methods.params_class("mlkd")(temperatures=[])
    m = _method(torch.nn.Linear(2, N), torch.nn.Linear(2, N))
    assert m.phases() == [] and m.extra_parameter_count() == 0


def test_training_through_the_trainer_reads_the_strong_view(tmp_path):
    """The trainer runs the student and the (live) teacher on both views and steps every term."""
    rng = np.random.default_rng(1)
    train = Split(rng.integers(0, 256, (32, 3, 32, 32), dtype=np.uint8), np.arange(32) % 10)
    test = Split(rng.integers(0, 256, (16, 3, 32, 32), dtype=np.uint8), np.arange(16) % 10)
    data = in_memory(train, test, [str(c) for c in range(10)], "random")
    torch.manual_seed(5)
    teacher = models.create("resnet8", 10).eval()
    trained = train_network("resnet8", TrainParams(epochs=1, batch_size=16, lr=0.05), 0, "mlkd",
                            methods.params_class("mlkd")(), data, tmp_path, teacher=teacher)
    record = trained.result.history[-1]
    for term in ("ce", "ce_strong", "instance", "instance_strong", "batch", "class"):
        assert record[f"train/{term}"] > 0 and record[f"gradnorm/{term}"] > 0, term
    assert trained.teacher_source == "live"
    start = new_student("resnet8", 10, 32, 0, None, torch.device("cpu"))  # the weights it started from
    assert any(not torch.equal(a, b) for a, b in zip(start.parameters(), trained.student.parameters()))
