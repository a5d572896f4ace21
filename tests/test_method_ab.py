"""ab: the boundary loss and its gradient against numpy, stage weights, connectors and their count, the init
phase (what it trains, frozen afterwards, through the real trainer), the CE-only main training."""
import numpy as np
import pytest
import torch

import methods
from dataset.loader import Loader
from dataset.store import Split
from method_helpers import (assert_each_gets_gradient, assert_step_updates_student, assert_terms_send_gradient,
                            make_method, make_pair, random_batch)
from methods.ab import ab_loss
from models.base import Features
from training.params import TrainParams
from training.trainer import fit


def _np_ab(s, t, m):
    """The references' criterion_alternative_L2, element by element, / batch."""
    total = 0.0
    for idx in np.ndindex(s.shape):
        sv, tv = s[idx], t[idx]
        if sv > -m and tv <= 0:
            total += (sv + m) ** 2
        if sv <= m and tv > 0:
            total += (sv - m) ** 2
    return total / s.shape[0]


def _np_ab_grad(s, t, m):
    """d/ds of the above: 2 (s + m) where s > -m, t <= 0; 2 (s - m) where s <= m, t > 0; / batch."""
    g = np.where((s > -m) & (t <= 0), 2 * (s + m), 0.0) + np.where((s <= m) & (t > 0), 2 * (s - m), 0.0)
    return g / s.shape[0]


def test_ab_loss_and_gradient_match_numpy():
    rng = np.random.default_rng(0)
    s, t = 1.5 * rng.normal(size=(2, 3, 2, 2)), rng.normal(size=(2, 3, 2, 2))
    for m in (1.0, 0.5):
        expected = _np_ab(s, t, m)
        s_t = torch.tensor(s, requires_grad=True)
        got = ab_loss(s_t, torch.tensor(t), m)
        assert expected > 0 and abs(got.item() - expected) < 1e-12
        got.backward()
        np.testing.assert_allclose(s_t.grad.numpy(), _np_ab_grad(s, t, m), rtol=0, atol=1e-12)
    # zero once the student is at least m beyond zero on the teacher's side of every boundary
    beyond = np.where(t > 0, 1.2, -1.2)
    assert ab_loss(torch.tensor(beyond), torch.tensor(t), 1.0).item() == 0.0


@pytest.fixture(scope="module")
def mismatched():
    """wrn_16_2 (32/64/128 channels, its repeated tap skipped) teaching resnet8 (16/32/64): three connectors."""
    t, s = make_pair("wrn_16_2", "resnet8")
    return s, t, make_method("ab", s, t)


def test_defaults_connectors_and_extra_parameters(mismatched):
    s, t, m = mismatched
    p = methods.params_class("ab")()
    assert (p.ce_weight, p.ab_weight, p.margin, p.init_epochs, p.init_lr) == (1.0, 3e-3, 1.0, 30, 0.05)
    assert m.pairs == [(0, 0), (1, 1), (2, 2)]
    assert [(c[0].in_channels, c[0].out_channels) for c in m.connectors] == [(16, 32), (32, 64), (64, 128)]
    assert not any(q.requires_grad for q in m.connectors.parameters())  # only the phase trains them
    # per stage: 1x1 conv c_s*c_t (no bias), BN weight/bias/mean/var 4*c_t, num_batches_tracked 1
    assert m.extra_parameter_count() == sum(cs * ct + 4 * ct + 1 for cs, ct in ((16, 32), (32, 64), (64, 128)))
    # equal widths: identity connectors, nothing added (as resnet32x4 -> resnet8x4)
    t2, s2 = make_pair("resnet14", "resnet8")
    same = make_method("ab", s2, t2)
    assert all(isinstance(c, torch.nn.Identity) for c in same.connectors) and same.extra_parameter_count() == 0


def test_stage_weights_and_weight():
    """Identity connectors, teacher maps <= 0, student maps a_k: stage k adds (a_k + 1)^2 * CHW / 2^(2-k)."""
    teacher, student = make_pair("resnet14", "resnet8")
    m = make_method("ab", student, teacher, ab_weight=0.5)
    shapes, amps = [(16, 32, 32), (32, 16, 16), (64, 8, 8)], [0.5, -0.25, 2.0]
    s = [torch.full((2, *sh), a) for sh, a in zip(shapes, amps)]
    t = [torch.full((2, *sh), -0.1) for sh in shapes]

    def out(f):
        return torch.zeros(2, 10), Features(stem=f[0], stages=f, preact=f, pooled=f[-1].mean((2, 3)))

    got = m.init_losses(out(s), out(t), torch.tensor([0, 1]), torch.arange(2), 1)
    expected = 0.5 * sum((a + 1) ** 2 * np.prod(sh) / 2 ** (2 - k) for k, (sh, a) in enumerate(zip(shapes, amps)))
    assert set(got) == {"ab"} and got["ab"].item() == pytest.approx(expected, rel=1e-6)


def test_phase_trains_connectors_and_student_body_only(mismatched):
    s, t, m = mismatched
    phases = m.phases()
    assert [(ph.name, ph.epochs, ph.lr, ph.momentum, ph.weight_decay) for ph in phases] == \
        [("init", 30, 0.05, 0.9, 5e-4)]
    phase = phases[0]
    head = {id(q) for q in s.classifier.parameters()}
    expected = [q for q in s.parameters() if id(q) not in head] + list(m.connectors.parameters())
    assert [id(q) for q in phase.parameters] == [id(q) for q in expected]
    assert s in phase.train_modules and m in phase.train_modules
    for q in m.connectors.parameters():  # as the trainer does for the phase's duration
        q.requires_grad_(True)
    try:
        out_s, out_t, y = random_batch(s, t)
        terms = phase.losses(out_s, out_t, y, torch.arange(4), 1)
        assert set(terms) == {"ab"}
        assert_terms_send_gradient(terms, s)
        assert_each_gets_gradient(terms["ab"], m.connectors.named_parameters())
        grads = torch.autograd.grad(terms["ab"], list(s.classifier.parameters()), allow_unused=True)
        assert all(g is None for g in grads)  # the head is not in the phase
    finally:
        m.connectors.requires_grad_(False)


def test_main_training_is_cross_entropy_only(mismatched):
    s, t, m = mismatched
    m.train()
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


def test_trainer_runs_the_phase_then_keeps_connectors_frozen(tmp_path):
    """Through training.trainer.fit: the phase moves the connectors and the student body, not the head; the
    main training then moves the student and never the connectors."""
    t, s = make_pair("wrn_16_2", "resnet8")
    m = make_method("ab", s, t, n_train=8, init_epochs=1)
    conn_init = {k: v.clone() for k, v in m.connectors.state_dict().items()}
    student_init = {k: v.clone() for k, v in s.state_dict().items()}
    after_phase = {}

    def on_epoch(rec):
        if "phase/init/train/loss" in rec:
            after_phase.update(connectors={k: v.clone() for k, v in m.connectors.state_dict().items()},
                               student={k: v.clone() for k, v in s.state_dict().items()})

    cfg = TrainParams(epochs=1, batch_size=4, lr=0.05, amp=False, augment=False, keep_epochs=[])
    result = fit(s, m, cfg, _loader(8, 0), _loader(4, 1), seed=0, work_dir=tmp_path, teacher=t, on_epoch=on_epoch)
    assert len(result.phases["init"]) == 1
    conn, body = after_phase["connectors"], after_phase["student"]
    assert any(not torch.equal(conn[k], conn_init[k]) for k in conn_init)
    assert all(torch.equal(body[k], student_init[k]) for k in student_init if k.startswith("classifier."))
    assert any(not torch.equal(body[k], student_init[k]) for k in student_init if k.startswith("stages.0."))
    assert all(torch.equal(v, conn[k]) for k, v in m.connectors.state_dict().items())  # frozen afterwards
    assert not torch.equal(s.classifier.weight, body["classifier.weight"])  # the main training trains the head
    assert not any(q.requires_grad for q in m.connectors.parameters())
    state = torch.load(tmp_path / "last.pt", weights_only=True)
    assert sum(len(g["params"]) for g in state["optimizer"]["param_groups"]) == len(list(s.parameters()))


def test_cross_family_pair_pools_the_larger_map():
    # resnet8 (16/32/64 at 32/16/8) -> vgg8 (4 distinct stages at 16/8/4/4): deepest 3 paired, student pooled
    teacher, student = make_pair("vgg8", "resnet8")
    m = make_method("ab", student, teacher)
    assert m.pairs == [(0, 1), (1, 2), (2, 3)]
    out_s, out_t, y = random_batch(student, teacher, batch=2)
    terms = m.boundary_terms(out_s, out_t)
    assert len(terms) == 3 and all(torch.isfinite(x) and x > 0 for x in terms)
