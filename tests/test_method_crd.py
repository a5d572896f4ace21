"""crd: NCE loss against numpy, Z fixed on the first batch, memory-bank updates, other-class negatives,
gradients into the student and both embeddings, extra-cost count, checkpoint round trip, cross-family pair."""
import numpy as np
import pytest
import torch

import methods
from method_helpers import (assert_each_gets_gradient, assert_step_updates_student, assert_terms_send_gradient,
                            make_method, make_pair, random_batch)
from methods.crd import contrast_scores, draw_negatives, nce_loss


def _np_nce(p, n_data, eps=1e-7):
    b, k = p.shape[0], p.shape[1] - 1
    noise = k * (1.0 / n_data)
    total = 0.0
    for i in range(b):
        total += np.log(p[i, 0] / (p[i, 0] + noise + eps))
        total += sum(np.log(noise / (p[i, j] + noise + eps)) for j in range(1, k + 1))
    return -total / b


def test_nce_loss_matches_numpy():
    p = np.array([[0.30, 0.01, 0.02, 0.05], [0.002, 0.4, 0.1, 0.03]])
    got = nce_loss(torch.tensor(p), num_data=10).item()
    assert abs(got - _np_nce(p, 10)) < 1e-12
    # a confident positive with unlikely negatives costs less than the reverse
    assert nce_loss(torch.tensor([[5.0, 1e-4, 1e-4]]), 100) < nce_loss(torch.tensor([[1e-4, 5.0, 5.0]]), 100)


def test_contrast_scores_gather_the_contrast_rows():
    anchor = torch.tensor([[0.6, 0.8], [1.0, 0.0]], dtype=torch.float64)
    bank = torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0], [0.6, -0.8]], dtype=torch.float64)
    cidx = torch.tensor([[0, 2, 3], [1, 0, 3]])
    got = contrast_scores(anchor, bank, cidx, 0.5).numpy()
    a, m = anchor.numpy(), bank.numpy()
    expected = np.array([[np.exp(a[b] @ m[j] / 0.5) for j in row] for b, row in enumerate(cidx.numpy())])
    assert np.allclose(got, expected, rtol=1e-12)


def test_defaults_are_the_reference_values():
    p = methods.params_class("crd")()
    assert (p.ce_weight, p.crd_weight, p.feat_dim, p.num_negatives, p.temperature, p.momentum) == (
        1.0, 0.8, 128, 16384, 0.07, 0.5)


def test_loss_matches_numpy_and_z_is_fixed_on_the_first_batch():
    t, s = make_pair("resnet14", "resnet8")
    labels = torch.arange(32) % 4
    m = make_method("crd", s, t, train_labels=labels, num_negatives=6)
    out_s, out_t, y = random_batch(s, t, seed=1)
    index = torch.tensor([3, 10, 17, 28])
    mem_s, mem_t = m.memory_s.clone().double().numpy(), m.memory_t.clone().double().numpy()
    torch.manual_seed(7)
    cidx = m.contrast_index(index).numpy()
    torch.manual_seed(7)  # the same draw inside losses()
    terms = m.losses(out_s, out_t, y, index, epoch=1)
    v_s = m.embed_s(out_s[1].pooled).detach().double().numpy()
    v_t = m.embed_t(out_t[1].pooled).detach().double().numpy()
    e_s = np.exp(np.einsum("bd,bkd->bk", v_s, mem_t[cidx]) / 0.07)  # student anchor vs teacher bank
    e_t = np.exp(np.einsum("bd,bkd->bk", v_t, mem_s[cidx]) / 0.07)  # teacher anchor vs student bank
    z_s, z_t = e_s.mean() * 32, e_t.mean() * 32
    assert np.allclose(m.nce_z.numpy(), [z_s, z_t], rtol=1e-5)
    expected = 0.8 * (_np_nce(e_s / z_s, 32) + _np_nce(e_t / z_t, 32))
    assert abs(terms["crd"].item() - expected) < 1e-4 * expected
    z_first = m.nce_z.clone()
    m.losses(*random_batch(s, t, seed=2), torch.tensor([0, 1, 2, 5]), epoch=1)
    assert torch.equal(m.nce_z, z_first)  # fixed after the first batch


def test_bank_rows_of_the_batch_move_after_a_step_and_no_others():
    t, s = make_pair("resnet14", "resnet8")
    m = make_method("crd", s, t, train_labels=torch.arange(24) % 3, num_negatives=8)
    opt = torch.optim.SGD(list(s.parameters()) + list(m.parameters()), lr=0.1)
    index = torch.tensor([2, 5, 11, 20])
    old_s, old_t = m.memory_s.clone(), m.memory_t.clone()
    out_s, out_t, y = random_batch(s, t, seed=1)
    terms = m.losses(out_s, out_t, y, index, epoch=1)
    v_s, v_t = m.embed_s(out_s[1].pooled).detach(), m.embed_t(out_t[1].pooled).detach()
    sum(terms.values()).backward()  # the out-of-place bank update left this step's graph intact
    opt.step()
    others = torch.ones(24, dtype=torch.bool)
    others[index] = False
    for new, old, v in ((m.memory_s, old_s, v_s), (m.memory_t, old_t, v_t)):
        assert torch.equal(new[others], old[others])
        assert (new[index] - old[index]).abs().amax(dim=1).min() > 1e-4  # every batch row moved
        expected = torch.nn.functional.normalize(0.5 * old[index] + 0.5 * v, dim=1)
        assert torch.allclose(new[index], expected, atol=1e-6)
        assert torch.allclose(new[index].norm(dim=1), torch.ones(4), atol=1e-6)
    # eval mode: the loss is still computed but no row moves
    m.eval()
    frozen = m.memory_s.clone()
    m.losses(*random_batch(s, t, seed=3), index, epoch=1)
    assert torch.equal(m.memory_s, frozen)


def test_negatives_never_share_the_anchor_class_and_are_distinct():
    t, s = make_pair("resnet14", "resnet8")
    labels = torch.tensor([0] * 10 + [1] * 6 + [2] * 8 + [3] * 6)  # N=30, largest class 10 -> pool >= 20
    m = make_method("crd", s, t, train_labels=labels, num_negatives=7)
    assert m.num_negatives == 7
    index = torch.tensor([0, 9, 10, 15, 16, 29])
    torch.manual_seed(3)
    cidx = m.contrast_index(index)
    assert cidx.shape == (6, 8) and torch.equal(cidx[:, 0], index)  # exact mode: the positive is itself
    for row in cidx:
        neg = row[1:]
        assert len(set(neg.tolist())) == 7
        assert (labels[neg] != labels[row[0]]).all()
    torch.manual_seed(3)
    assert torch.equal(m.contrast_index(index), cidx)  # reproducible on the torch RNG
    torch.manual_seed(4)
    assert not torch.equal(m.contrast_index(index), cidx)


def test_k_is_clamped_to_the_smallest_pool_and_draws_are_uniform():
    t, s = make_pair("resnet14", "resnet8")
    labels = torch.tensor([0] * 25 + [1] * 10 + [2] * 5)  # largest class 25 of 40: pool of a class-0 anchor = 15
    m = make_method("crd", s, t, train_labels=labels)  # default K = 16384
    assert m.num_negatives == 15
    cidx = m.contrast_index(torch.tensor([0, 30]))
    assert set(cidx[0, 1:].tolist()) == set(range(25, 40))  # the whole pool of a class-0 anchor
    assert (labels[cidx[1, 1:]] != 1).all() and len(set(cidx[1, 1:].tolist())) == 15
    # uniform over the pool: 3000 draws of 15 from the 30 non-class-1 samples, each expected 1500 times
    torch.manual_seed(0)
    counts = torch.bincount(draw_negatives(labels, torch.full((3000,), 30), 15).flatten(), minlength=40)
    assert counts[25:35].sum() == 0 and counts[labels != 1].min() > 1350 and counts.max() < 1650


def test_gradients_reach_student_and_both_embeddings():
    t, s = make_pair("resnet14", "resnet8")
    m = make_method("crd", s, t)  # 16 random labels
    out_s, out_t, y = random_batch(s, t, seed=1)
    terms = m.losses(out_s, out_t, y, torch.arange(4), epoch=1)
    assert set(terms) == {"ce", "crd"}
    assert_terms_send_gradient(terms, s)
    assert_each_gets_gradient(terms["crd"], m.named_parameters())


def test_extra_parameter_count_includes_embeddings_and_banks():
    t, s = make_pair("resnet14", "resnet8")
    m = make_method("crd", s, t)  # 16 random labels
    # embed_s 64->128 and embed_t 64->128 (weights + biases), two 16x128 banks, two Z constants
    assert m.extra_parameter_count() == 2 * (64 * 128 + 128) + 2 * 16 * 128 + 2
    t4, s4 = make_pair("resnet32x4", "resnet8x4")
    # CIFAR-100 sized: 256-d pooled on both sides
    m4 = make_method("crd", s4, t4, train_labels=torch.arange(50000) % 100)
    assert m4.num_negatives == 16384
    assert m4.extra_parameter_count() == 2 * (256 * 128 + 128) + 2 * 50000 * 128 + 2 == 12_865_794


def test_state_dict_round_trip_restores_banks_and_z():
    t, s = make_pair("resnet14", "resnet8")
    labels = torch.randint(0, 10, (16,))
    m = make_method("crd", s, t, train_labels=labels)
    m.losses(*random_batch(s, t, seed=1), torch.arange(4), epoch=1)
    state = m.state_dict()
    assert {"memory_s", "memory_t", "nce_z"} <= set(state)
    fresh = make_method("crd", s, t, train_labels=labels)
    fresh.load_state_dict(state)
    assert torch.equal(fresh.memory_t, m.memory_t) and torch.equal(fresh.nce_z, m.nce_z)
    out = random_batch(s, t, seed=5)
    torch.manual_seed(9)
    a = m.losses(*out, torch.arange(4, 8), epoch=2)["crd"]
    torch.manual_seed(9)
    b = fresh.losses(*out, torch.arange(4, 8), epoch=2)["crd"]
    assert torch.allclose(a, b)


def test_not_applicable_without_negatives_or_labels():
    t, s = make_pair("resnet14", "resnet8")
    with pytest.raises(methods.MethodNotApplicable, match="same class"):
        make_method("crd", s, t, train_labels=torch.zeros(8, dtype=torch.long))
    ctx = methods.MethodContext(student=s, teacher=t, num_classes=10, num_train=8, input_size=32)
    with pytest.raises(methods.MethodNotApplicable, match="train_labels"):
        methods.create("crd", methods.params_class("crd")(), ctx)


def test_cross_family_pair_runs_a_step():
    t, s = make_pair("vgg8", "MobileNetV2")  # 1280-d vs 512-d pooled
    m = make_method("crd", s, t)  # 16 random labels
    assert m.embed_s.linear.in_features == 1280 and m.embed_t.linear.in_features == 512
    assert_step_updates_student(m, s, t, train_method=True, seed=1)
