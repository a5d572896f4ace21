"""fsp: FSP matrices and the loss against numpy (pooling included), the student gradient against numpy finite
differences, which maps are paired and which pairs are refused, the init phase through the real trainer, the
CE-only main training."""
import numpy as np
import pytest
import torch

import methods
from dataset.loader import Loader
from dataset.store import Split
from method_helpers import (assert_no_extra_parameters, assert_step_updates_student, assert_terms_send_gradient,
                            make_method, make_pair, random_batch)
from methods.fsp import fsp_loss, fsp_matrix
from training.params import TrainParams
from training.trainer import fit


def _np_pool(a, size):
    b, c, h, w = a.shape
    k = h // size
    return a.reshape(b, c, size, k, size, k).mean(axis=(3, 5))


def _np_gram(f1, f2):
    size = min(f1.shape[-1], f2.shape[-1])
    f1, f2 = _np_pool(f1, size), _np_pool(f2, size)
    g = np.zeros((f1.shape[0], f1.shape[1], f2.shape[1]))
    for b, i, j in np.ndindex(g.shape):
        g[b, i, j] = (f1[b, i] * f2[b, j]).sum() / (size * size)
    return g


def _np_fsp(maps_s, maps_t):
    return sum(((_np_gram(maps_s[k], maps_s[k + 1]) - _np_gram(maps_t[k], maps_t[k + 1])) ** 2).mean()
               for k in range(len(maps_s) - 1))


def _maps(rng, shapes):
    return [rng.normal(size=sh) for sh in shapes]


SHAPES = [(2, 2, 4, 4), (2, 3, 4, 4), (2, 4, 2, 2)]  # the second pair pools the 4x4 map to 2x2


def test_fsp_matrix_and_loss_match_numpy():
    rng = np.random.default_rng(0)
    maps_s, maps_t = _maps(rng, SHAPES), _maps(rng, SHAPES)
    g = fsp_matrix(torch.tensor(maps_s[1]), torch.tensor(maps_s[2]))
    assert g.shape == (2, 3, 4)
    np.testing.assert_allclose(g.numpy(), _np_gram(maps_s[1], maps_s[2]), rtol=0, atol=1e-12)
    got = fsp_loss([torch.tensor(a) for a in maps_s], [torch.tensor(a) for a in maps_t]).item()
    expected = _np_fsp(maps_s, maps_t)
    assert expected > 0 and abs(got - expected) < 1e-12
    assert fsp_loss([torch.tensor(a) for a in maps_s], [torch.tensor(a) for a in maps_s]).item() == 0.0


def test_fsp_student_gradient_matches_numpy_finite_differences():
    rng = np.random.default_rng(1)
    maps_s, maps_t = _maps(rng, SHAPES), _maps(rng, SHAPES)
    s_t = [torch.tensor(a, requires_grad=True) for a in maps_s]
    fsp_loss(s_t, [torch.tensor(a) for a in maps_t]).backward()
    eps = 1e-6
    for k, a in enumerate(maps_s):
        numeric = np.zeros_like(a)
        for idx in np.ndindex(a.shape):
            plus, minus = [x.copy() for x in maps_s], [x.copy() for x in maps_s]
            plus[k][idx] += eps
            minus[k][idx] -= eps
            numeric[idx] = (_np_fsp(plus, maps_t) - _np_fsp(minus, maps_t)) / (2 * eps)
        np.testing.assert_allclose(s_t[k].grad.numpy(), numeric, rtol=1e-6, atol=1e-9)


def test_defaults_pairs_and_refusals():
    p = methods.params_class("fsp")()
    assert (p.ce_weight, p.fsp_weight, p.init_epochs, p.init_lr) == (1.0, 1.0, 30, 0.05)
    teacher, student = make_pair("resnet14", "resnet8")
    m = make_method("fsp", student, teacher)
    assert m.pairs == [(0, 0), (1, 1), (2, 2), (3, 3)]  # stem + 3 stages: 3 FSP matrices
    assert_no_extra_parameters(m)
    # WRN: the final tap (its pre-activation repeats group 3's) is skipped: stem + 3 groups, as the reference
    teacher, student = make_pair("wrn_16_2", "wrn_16_2")
    assert make_method("fsp", student, teacher).pairs == [(0, 0), (1, 1), (2, 2), (3, 3)]
    # a channel mismatch is refused in one line
    teacher, student = make_pair("wrn_16_2", "resnet8")
    with pytest.raises(methods.MethodNotApplicable, match="equal channel counts") as e:
        make_method("fsp", student, teacher)
    assert "\n" not in str(e.value)


@pytest.fixture(scope="module")
def pair():
    t, s = make_pair("resnet14", "resnet8")
    return s, t, make_method("fsp", s, t)


def test_phase_trains_the_student_body_only(pair):
    s, t, m = pair
    phases = m.phases()
    assert [(ph.name, ph.epochs, ph.lr, ph.momentum, ph.weight_decay) for ph in phases] == \
        [("init", 30, 0.05, 0.9, 5e-4)]
    head = {id(q) for q in s.classifier.parameters()}
    assert [id(q) for q in phases[0].parameters] == [id(q) for q in s.parameters() if id(q) not in head]
    assert phases[0].train_modules == [s]
    out_s, out_t, y = random_batch(s, t)
    terms = phases[0].losses(out_s, out_t, y, torch.arange(4), 1)
    assert set(terms) == {"fsp"}
    assert_terms_send_gradient(terms, s)
    maps_s, maps_t = m.paired_maps(out_s, out_t)
    assert terms["fsp"].item() == pytest.approx(fsp_loss(maps_s, maps_t).item())  # fsp_weight 1
    grads = torch.autograd.grad(terms["fsp"], list(s.classifier.parameters()), allow_unused=True)
    assert all(g is None for g in grads)


def test_main_training_is_cross_entropy_only(pair):
    s, t, m = pair
    out_s, out_t, y = random_batch(s, t, seed=3)
    terms = m.losses(out_s, out_t, y, torch.arange(4), epoch=1)
    assert set(terms) == {"ce"}
    assert terms["ce"].item() == pytest.approx(torch.nn.functional.cross_entropy(out_s[0], y).item())
    assert_terms_send_gradient(terms, s)
    assert_step_updates_student(m, s, t, seed=4)


def _loader(n, seed):
    g = np.random.default_rng(seed)
    split = Split(images=g.integers(0, 256, (n, 3, 32, 32), dtype=np.uint8), labels=g.integers(0, 10, n))
    return Loader(split, (0.5, 0.5, 0.5), (0.25, 0.25, 0.25), batch_size=4, device=torch.device("cpu"))


def test_trainer_runs_the_phase_on_the_body_then_trains_normally(tmp_path):
    t, s = make_pair("resnet14", "resnet8")
    m = make_method("fsp", s, t, n_train=8, init_epochs=1)
    init = {k: v.clone() for k, v in s.state_dict().items()}
    after_phase = {}

    def on_epoch(rec):
        if "phase/init/train/loss" in rec:
            after_phase.update({k: v.clone() for k, v in s.state_dict().items()})

    cfg = TrainParams(epochs=1, batch_size=4, lr=0.05, amp=False, augment=False, keep_epochs=[])
    result = fit(s, m, cfg, _loader(8, 0), _loader(4, 1), seed=0, work_dir=tmp_path, teacher=t, on_epoch=on_epoch)
    assert len(result.phases["init"]) == 1 and result.phases["init"][0]["phase/init/train/loss"] > 0
    assert all(torch.equal(after_phase[k], init[k]) for k in init if k.startswith("classifier."))
    assert any(not torch.equal(after_phase[k], init[k]) for k in init if k.startswith("stages.0."))
    assert not torch.equal(s.classifier.weight, after_phase["classifier.weight"])
