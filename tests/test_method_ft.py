"""ft: the factor loss against numpy, the paraphraser phase, freezing through the real trainer, gradients."""
import numpy as np
import pytest
import torch

import methods
from dataset.store import Split
from dataset.loader import Loader
from training.params import TrainParams
from training.trainer import fit
from method_helpers import (assert_each_gets_gradient, assert_terms_send_gradient, make_method, make_pair, n_params,
                            random_batch, random_inputs)
from methods.ft import ft_loss


def test_ft_loss_matches_numpy():
    rng = np.random.default_rng(0)
    fs, ft = rng.normal(size=(2, 3, 2, 2)), rng.normal(size=(2, 3, 2, 2))

    def unit_rows(a):
        a = a.reshape(len(a), -1)
        return a / np.sqrt((a ** 2).sum(axis=1, keepdims=True))

    expected = np.abs(unit_rows(fs) - unit_rows(ft)).mean()  # 2 x 12 elements
    assert abs(ft_loss(torch.tensor(fs), torch.tensor(ft)).item() - expected) < 1e-12
    # RepDistiller's variant: channel mean of squares (an H x W map) first
    expected = np.abs(unit_rows((fs ** 2).mean(axis=1)) - unit_rows((ft ** 2).mean(axis=1))).mean()
    assert abs(ft_loss(torch.tensor(fs), torch.tensor(ft), "attention").item() - expected) < 1e-12
    # different sizes: the 4x4 factor is average-pooled to 2x2 first
    big = rng.normal(size=(2, 3, 4, 4))
    pooled = big.reshape(2, 3, 2, 2, 2, 2).mean(axis=(3, 5))
    expected = np.abs(unit_rows(fs) - unit_rows(pooled)).mean()
    assert abs(ft_loss(torch.tensor(fs), torch.tensor(big)).item() - expected) < 1e-12
    assert ft_loss(torch.tensor(fs), torch.tensor(3 * fs)).item() < 1e-12  # scale-invariant


@pytest.fixture(scope="module")
def pair():
    t, s = make_pair("resnet14", "resnet8")
    return s, t, make_method("ft", s, t)


def test_defaults_and_extra_parameters(pair):
    s, t, m = pair
    p = methods.params_class("ft")()
    assert (p.ce_weight, p.ft_weight, p.factor_rate, p.factor, p.paraphraser_epochs, p.paraphraser_lr) == \
        (1.0, 200.0, 0.5, "flat", 30, 0.01)
    c, f = 64, 32  # resnet14's and resnet8's last maps have 64 channels; factor = 0.5 * 64
    conv = lambda i, o: 9 * i * o + o  # noqa: E731  (3x3 conv / transposed conv with bias)
    paraphraser = conv(c, c) + conv(c, f) + conv(f, f) + conv(f, f) + conv(f, c) + conv(c, c)
    bn = lambda ch: 2 * ch + 2 * ch + 1  # noqa: E731  (affine + running stats + num_batches_tracked)
    translator = 9 * c * c + bn(c) + 9 * c * f + bn(f) + 9 * f * f + bn(f)  # convs without bias before BN
    assert n_params(m.paraphraser) == paraphraser
    assert m.extra_parameter_count() == paraphraser + translator


def test_main_terms_send_gradient_to_student_and_translator_only(pair):
    s, t, m = pair
    torch.manual_seed(1)
    x, y = random_inputs(4)
    with torch.no_grad():
        out_t = t(x)
    terms = m.losses(s(x), out_t, y, torch.arange(4), epoch=1)
    assert set(terms) == {"ce", "ft"}
    f_s, f_t = m.factors(s(x), out_t)
    assert f_s.shape == f_t.shape == (4, 32, 8, 8)
    assert_terms_send_gradient(terms, s)
    assert_each_gets_gradient(terms["ft"], m.translator.named_parameters())
    assert not any(p.requires_grad for p in m.paraphraser.parameters())  # frozen in the main phase
    assert terms["ft"].grad_fn is not None
    assert abs(terms["ft"].item() - 200.0 * ft_loss(f_s, f_t).item()) < 1e-3


def test_paraphraser_phase_loss_decreases_on_fixed_teacher_features(pair):
    s, t, m = pair
    phases = m.phases()
    assert [(ph.name, ph.epochs, ph.lr) for ph in phases] == [("paraphraser", 30, 0.01)]
    phase = phases[0]
    assert {id(p) for p in phase.parameters} == {id(p) for p in m.paraphraser.parameters()}
    before = {k: v.clone() for k, v in m.paraphraser.state_dict().items()}
    torch.manual_seed(2)
    x, y = random_inputs(8)
    with torch.no_grad():
        out_t, out_s = t(x), s(x)
    opt = torch.optim.SGD(phase.parameters, lr=phase.lr, momentum=phase.momentum, weight_decay=phase.weight_decay)
    values = []
    for _ in range(8):
        loss = sum(phase.losses(out_s, out_t, y, torch.arange(8), 1).values())
        opt.zero_grad()
        loss.backward()
        opt.step()
        values.append(loss.item())
    assert values[-1] < 0.995 * values[0], values
    assert all(b < a for a, b in zip(values, values[1:])), values
    # the student is untouched by the phase loss; the main loss then freezes the paraphraser again
    assert all(p.grad is None for p in s.parameters())
    m.losses(out_s, out_t, y, torch.arange(8), 2)
    assert not any(p.requires_grad for p in m.paraphraser.parameters())
    m.paraphraser.load_state_dict(before)  # leave the module fixture as it was


def _loader(n, seed):
    g = np.random.default_rng(seed)
    split = Split(images=g.integers(0, 256, (n, 3, 32, 32), dtype=np.uint8), labels=g.integers(0, 10, n))
    return Loader(split, (0.5, 0.5, 0.5), (0.25, 0.25, 0.25), batch_size=4, device=torch.device("cpu"))


def test_trainer_pretrains_then_freezes_the_paraphraser(tmp_path):
    """Through training.trainer.fit: the phase changes only the paraphraser; the main phase never does."""
    t, s = make_pair("resnet14", "resnet8")
    m = make_method("ft", s, t, n_train=8, paraphraser_epochs=2)
    init = {k: v.clone() for k, v in m.paraphraser.state_dict().items()}
    student_init = {k: v.clone() for k, v in s.state_dict().items()}
    translator_init = {k: v.clone() for k, v in m.translator.state_dict().items()}
    after_phase = {}

    def on_epoch(rec):
        if "phase/paraphraser/train/loss" in rec and rec["epoch"] == 2:
            after_phase.update({k: v.clone() for k, v in m.paraphraser.state_dict().items()})
            assert all(torch.equal(v, student_init[k]) for k, v in s.state_dict().items()
                       if not k.endswith("num_batches_tracked"))

    cfg = TrainParams(epochs=2, batch_size=4, lr=0.05, amp=False, augment=False, keep_epochs=[])
    result = fit(s, m, cfg, _loader(8, 0), _loader(4, 1), seed=0, work_dir=tmp_path, teacher=t, on_epoch=on_epoch)
    assert len(result.phases["paraphraser"]) == 2
    assert after_phase and any(not torch.equal(after_phase[k], init[k]) for k in init)  # the phase trained it
    assert all(torch.equal(v, after_phase[k]) for k, v in m.paraphraser.state_dict().items())  # then frozen
    assert any(not torch.equal(v, translator_init[k]) for k, v in m.translator.state_dict().items())
    assert not any(p.requires_grad for p in m.paraphraser.parameters())
    # the main optimiser holds exactly the student's and the translator's parameters
    state = torch.load(tmp_path / "last.pt", weights_only=True)
    n_main = sum(len(g["params"]) for g in state["optimizer"]["param_groups"])
    assert n_main == len(list(s.parameters())) + len(list(m.translator.parameters()))
    assert result.final["gradnorm/ft"] > 0


def test_cross_family_pair_runs():
    # resnet8x4 (256 ch, 8x8) -> ShuffleV1 (960 ch, 4x4): the teacher factor is pooled to 4x4
    t, s = make_pair("resnet8x4", "ShuffleV1")
    m = make_method("ft", s, t)
    out_s, out_t, y = random_batch(s, t, batch=2)
    rec = m.phases()[0].losses(None, out_t, y, torch.arange(2), 1)["reconstruction"]
    rec.backward()
    assert all(p.grad is not None for p in m.paraphraser.parameters())
    f_s, f_t = m.factors(out_s, out_t)
    assert f_s.shape == (2, 128, 4, 4) and f_t.shape == (2, 128, 8, 8)
    terms = m.losses(out_s, out_t, y, torch.arange(2), epoch=1)
    assert_terms_send_gradient({"ft": terms["ft"]}, s)
