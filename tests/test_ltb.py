"""The LTB tree student of KDExplainer (Xue et al., IJCAI 2021): routing math, modes, stage-2 reset, shapes, parameter
count.

Anything that runs a forward pass uses ``ltb_w16`` on tiny batches; only the parameter count builds ``ltb``.
"""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import models
from models.base import count_parameters
from models.ltb import LTB, level_entropy

K = 10


def small(seed: int = 0, num_classes: int = K) -> LTB:
    torch.manual_seed(seed)
    return models.create("ltb_w16", num_classes)


def images(n: int = 2, seed: int = 1) -> torch.Tensor:
    return torch.randn(n, 3, 32, 32, generator=torch.Generator().manual_seed(seed))


def block_params(cin: int, mid: int, cout: int) -> int:
    """Two biased 3x3 convs and their BNs (weight + bias each)."""
    return (cin * mid * 9 + mid) + 2 * mid + (mid * cout * 9 + cout) + 2 * cout


def ltb_params(k: int, w: int, o: int, hidden: int, pool: int = 7) -> tuple[int, int]:
    """(total, heads) from the layer table of the authors' code, without the 7x7 stem the CIFAR path never uses."""
    head = (o * pool * pool * hidden + hidden) + (hidden * hidden + hidden) + (hidden + 1)
    experts = 2 * block_params(3, w, w) + 4 * block_params(w, w, w) + 8 * block_params(w, w, o)
    routing = 4 * 2 + 8 * 4 + k * 8
    return experts + routing + k * head, k * head


def test_parameter_count_of_ltb_matches_hand_count():
    total, heads = ltb_params(10, 64, 32, 128)
    assert (total, heads) == (2_993_922, 2_174_730)  # the authors' code: 217,473 per head
    # The authors' "3.00 M" also counts the unused Conv7x7(3->64)+BN stem: 9,408 + 64 + 128 = 9,600 more.
    assert round((total + 9_600) / 1e6, 2) == 3.00
    torch.manual_seed(0)
    model = models.create("ltb", 10)
    assert abs(count_parameters(model) - total) <= 0.01 * total
    assert count_parameters(model.heads) == heads
    assert count_parameters(small()) == ltb_params(K, 16, 8, 32)[0]


def test_no_linear_classifier_and_features_not_exposed():
    model = small()
    assert model.exposes_features is False
    assert not hasattr(model, "classifier")
    assert not any(isinstance(m, nn.Linear) for m in model.modules())


def test_registered_ltbs_learn_their_structure():
    for name in ("ltb", "ltb_w16"):  # known from the registry alone, no network built
        assert models.family(name) is LTB and models.family(name).learns_structure


def test_init_follows_a2():
    model = small()
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    assert len(convs) == 2 * (2 + 4 + 8)
    assert all(torch.all(c.bias == 0) for c in convs)
    w = model.level2[0][0].weight  # 16 -> 16, fan_out = 16 * 9
    assert abs(w.std().item() - math.sqrt(2 / (16 * 9))) < 0.1 * math.sqrt(2 / (16 * 9))
    # ltb_w16's heads are He-initialised (short CPU runs); the paper's ltb keeps upstream's N(0, 0.01)
    fan_in = model.heads.w1.shape[-1]
    assert abs(model.heads.w1.std().item() - math.sqrt(2 / fan_in)) < 0.05 * math.sqrt(2 / fan_in)
    assert abs(model.heads.w3.std().item() - math.sqrt(1 / model.heads.w3.shape[-1])) < 0.2 / math.sqrt(32)
    torch.manual_seed(0)
    paper = models.create("ltb", K)
    assert abs(paper.heads.w1.std().item() - 0.01) < 5e-4
    assert torch.all(model.heads.b1 == 0) and torch.all(model.heads.b3 == 0)
    for r in model.routing:
        assert r.min() >= 0 and r.max() < 1
    torch.testing.assert_close(small(seed=3).state_dict(), small(seed=3).state_dict(), rtol=0, atol=0)


def test_forward_shapes_and_features():
    model = small().eval()
    with torch.no_grad():
        logits, f = model(images(2))
    assert logits.shape == (2, K)
    assert [tuple(s.shape) for s in f.stages] == [(2, 32, 16, 16), (2, 64, 8, 8), (2, K * 8, 4, 4)]
    assert f.stem is f.stages[0]
    assert [p is s for p, s in zip(f.preact, f.stages)] == [True] * 3
    torch.testing.assert_close(f.pooled, f.stages[-1].mean(dim=(2, 3)))


@pytest.mark.parametrize("train", [True, False])
def test_batch_of_one(train):
    model = small().train(train)
    logits, f = model(images(1))
    assert logits.shape == (1, K) and f.pooled.shape == (1, K * 8)
    assert torch.isfinite(logits).all()


def _assert_distributions(gates):
    for g in gates:
        assert torch.all(g >= 0)
        torch.testing.assert_close(g.sum(dim=1), torch.ones(g.shape[0]))


def test_preferences_and_soft_gates_follow_a3():
    model = small()
    assert [tuple(p.shape) for p in model.preferences()] == [(4, 2), (8, 4), (K, 8)]
    for epoch in (1, 3, 50):
        model.start_epoch(epoch)
        t = 10.0 / epoch
        gates = model.gates()
        _assert_distributions(gates)
        for w, g in zip(model.routing, gates):
            pi = torch.exp(w / 0.5) / torch.exp(w / 0.5).sum(dim=1, keepdim=True)
            want = pi ** (1 / t) / (pi ** (1 / t)).sum(dim=1, keepdim=True)
            torch.testing.assert_close(g, want)
    _assert_distributions(model.preferences())


def test_temperature_schedule():
    model = small()
    assert model.temperature.item() == 10.0 and not bool(model.hard)
    for epoch, t in ((1, 10.0), (2, 5.0), (4, 2.5), (300, 10.0 / 300)):
        model.start_epoch(epoch)
        assert model.temperature.item() == pytest.approx(t)
    with pytest.raises(ValueError):
        model.start_epoch(0)
    model.freeze_structure()
    model.start_epoch(7)  # no-op in hard mode
    assert model.temperature.item() == pytest.approx(10.0 / 300)


def test_hard_gates_are_one_hot_argmax():
    model = small()
    model.freeze_structure()
    gates = model.gates()
    _assert_distributions(gates)
    for g, p in zip(gates, model.preferences()):
        assert set(g.unique().tolist()) <= {0.0, 1.0}
        assert torch.equal(g.argmax(dim=1), p.argmax(dim=1))
        assert torch.all(g.sum(dim=1) == 1)


def test_hard_forward_routes_each_child_through_its_argmax_parent():
    """Manual tree: every child reads only its argmax parent; head k is its own MLP on its routed map."""
    model = small(seed=2).eval()
    model.freeze_structure()
    x = images(3)
    with torch.no_grad():
        logits, f = model(x)
        c1, c2, c3 = [p.argmax(dim=1).tolist() for p in model.preferences()]
        y1 = [b(x) for b in model.level1]
        y2 = [b(y1[c1[c]]) for c, b in enumerate(model.level2)]
        y3 = [b(y2[c2[c]]) for c, b in enumerate(model.level3)]
        h = model.heads
        want = []
        for k in range(K):
            z = F.adaptive_avg_pool2d(y3[c3[k]], 7).flatten(1)
            z = F.relu(F.linear(z, h.w1[k], h.b1[k]))
            z = F.relu(F.linear(z, h.w2[k], h.b2[k]))
            want.append(F.linear(z, h.w3[k : k + 1], h.b3[k : k + 1]))
        want = torch.cat(want, dim=1)
    torch.testing.assert_close(logits, want)
    torch.testing.assert_close(f.stages[1], torch.cat(y2, dim=1), rtol=0, atol=0)
    torch.testing.assert_close(f.stages[2], torch.cat([y3[c3[k]] for k in range(K)], dim=1), rtol=0, atol=0)


def test_freeze_and_reinitialise_keep_routing_and_reset_the_rest():
    model = small().train()
    model(images(4))  # move the BN running statistics
    bn = model.level1[0][1]
    assert int(bn.num_batches_tracked) == 1 and not torch.all(bn.running_mean == 0)
    routing = [w.detach().clone() for w in model.routing]
    conv = model.level3[5][3].weight.detach().clone()
    head = model.heads.w2.detach().clone()
    model.freeze_structure()
    model.reinitialise()
    assert all(torch.equal(a, b) for a, b in zip(routing, model.routing))
    assert all(not w.requires_grad for w in model.routing)
    assert not torch.equal(conv, model.level3[5][3].weight)
    assert not torch.equal(head, model.heads.w2)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            assert int(m.num_batches_tracked) == 0
            assert torch.all(m.running_mean == 0) and torch.all(m.running_var == 1)
            assert torch.all(m.weight == 1) and torch.all(m.bias == 0)
    assert bool(model.hard)


def test_state_dict_restores_mode_and_temperature():
    model = small(seed=4).eval()
    model.start_epoch(8)
    soft = small(seed=5)
    soft.load_state_dict(model.state_dict())
    assert soft.temperature.item() == pytest.approx(1.25) and not bool(soft.hard)
    model.freeze_structure()
    fresh = small(seed=6).eval()
    fresh.load_state_dict(model.state_dict())
    assert bool(fresh.hard) and fresh.temperature.item() == pytest.approx(1.25)
    x = images(2)
    with torch.no_grad():
        torch.testing.assert_close(fresh(x)[0], model(x)[0], rtol=0, atol=0)


def test_gradient_reaches_routing_only_in_soft_mode():
    model = small().train()
    model.start_epoch(2)
    model(images(2))[0].logsumexp(dim=1).sum().backward()
    for w in model.routing:
        assert w.grad is not None and w.grad.abs().sum() > 0
    model.zero_grad(set_to_none=True)
    model.freeze_structure()
    model(images(2))[0].logsumexp(dim=1).sum().backward()
    assert all(w.grad is None for w in model.routing)
    assert model.heads.w1.grad is not None and model.level1[0][0].weight.grad is not None


def test_named_param_groups_partition_the_parameters():
    model = small()
    groups = model.named_param_groups()
    assert set(groups) == {"weights", "routing"}
    assert [id(p) for p in groups["routing"]] == [id(w) for w in model.routing]
    ids = [id(p) for g in groups.values() for p in g]
    assert len(ids) == len(set(ids)) and set(ids) == {id(p) for p in model.parameters()}


def test_epoch_diagnostics_are_entropies_of_the_preferences():
    model = small()
    model.start_epoch(30)  # the training temperature must not matter
    diag = model.epoch_diagnostics()
    want = level_entropy([p.detach() for p in model.preferences()])
    assert diag == {f"routing/entropy/{k}": v for k, v in want.items()}
    assert len(diag) == 3 + 4 + 8 + K
    for level, parents in ((1, 2), (2, 4), (3, 8)):
        assert 0 <= diag[f"routing/entropy/level{level}"] <= math.log(parents)
