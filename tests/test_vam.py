"""VAM (models/vam.py): gates and mixing by hand, identity limits, the wiring on every family (forward_pre
wrapper, torch hook, model-level last-stage tap), save/re-attach/load, refusals, gradients."""
import copy
import json

import numpy as np
import pytest
import torch

import models
from method_helpers import assert_each_gets_gradient
from models.vam import VirtualAttention, attach_vam, vam_parameter_count, vam_regulariser

ZOO = ["resnet8", "wrn_16_2", "vgg8", "MobileNetV2", "ShuffleV2"]  # groups=4 divides stages -2 and -1 of each


def _net(name: str, seed: int = 0):
    """A zoo model in train mode: at initialisation, eval-mode BN (running statistics 0/1) makes some
    families' outputs nearly input-independent, which would hide a missing gate."""
    torch.manual_seed(seed)
    return models.create(name, 10).train()


def _x(seed: int = 1):
    return torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(seed))


def _randomise_gates(model, seed: int = 2) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.vam:
            m.logits.copy_(torch.randn(m.logits.shape, generator=g))


# ------------------------------------------------------------------------------------------- by hand
def test_gates_are_distributions_starting_on_the_diagonal():
    vam = VirtualAttention(12, 3, init_gain=2.0)
    g = vam.gates()
    assert torch.allclose(g.sum(1), torch.ones(3)) and (g > 0).all()
    assert torch.allclose(torch.diagonal(g), torch.full((3,), np.e**2 / (np.e**2 + 2)))


def test_mixing_by_hand():
    vam = VirtualAttention(4, 2, init_gain=0.0)
    gates = np.array([[0.75, 0.25], [0.4, 0.6]])  # child j (row) over parent i (column)
    with torch.no_grad():
        vam.logits.copy_(torch.tensor(np.log(gates)))
    x = torch.tensor([1.0, 2.0, 3.0, 4.0]).reshape(1, 4, 1, 1)  # blocks [1, 2] and [3, 4]
    expected = [0.75 * 1 + 0.25 * 3, 0.75 * 2 + 0.25 * 4, 0.4 * 1 + 0.6 * 3, 0.4 * 2 + 0.6 * 4]
    assert torch.allclose(vam(x).flatten(), torch.tensor(expected), atol=1e-6)
    h = -(gates * np.log(gates)).sum(1).mean()
    assert abs(vam.entropy().item() - h) < 1e-6


def test_entropy_is_log_groups_when_uniform_and_zero_when_one_hot():
    assert abs(VirtualAttention(8, 4, init_gain=0.0).entropy().item() - np.log(4)) < 1e-6
    assert VirtualAttention(8, 4, init_gain=50.0).entropy().item() < 1e-12


def test_one_group_is_the_identity():
    x = torch.randn(2, 6, 3, 3)
    assert torch.equal(VirtualAttention(6, 1, init_gain=0.7)(x), x)


# ------------------------------------------------------------------------------------- in the zoo
def _bare_and_vam(name: str, stages: list[int], init_gain: float = 1.0, groups: int = 4):
    """The same weights twice: bare, and with a VAM attached."""
    bare, net = _net(name), _net(name)
    attach_vam(net, stages, groups, init_gain, entropy_weight=0.1)
    return bare, net


@pytest.mark.parametrize("name", ZOO)
def test_large_init_gain_or_one_group_is_the_plain_network(name):
    bare, x = _net(name), _x()
    with torch.no_grad():
        expected = bare(x)[0]
        for init_gain, groups in ((50.0, 4), (0.0, 1)):
            net = _net(name)
            attach_vam(net, [-2, -1], groups, init_gain, entropy_weight=0.1)
            assert torch.allclose(net(x)[0], expected, atol=1e-5), (init_gain, groups)


@pytest.mark.parametrize("name", ZOO)
def test_the_gated_map_is_the_stage_output_and_feeds_everything_downstream(name):
    x = _x()
    bare, inter_only = _bare_and_vam(name, [-2])
    both = _net(name)
    attach_vam(both, [-2, -1], 4, 1.0, entropy_weight=0.1)
    _randomise_gates(both)
    inter_only.load_state_dict(both.state_dict(), strict=False)  # the same stage -2 gates ("vam.0.logits")
    with torch.no_grad():
        bare_logits, bare_f = bare(x)
        logits, f = both(x)
        _, inter_f = inter_only(x)
        assert torch.allclose(f.stages[-2], both.vam[0](bare_f.stages[-2]), atol=1e-5)  # upstream unchanged
        assert torch.allclose(inter_f.stages[-1], inter_only.extract(x).stages[-1])  # no tap on the last stage
        assert torch.allclose(f.stages[-1], both.vam[1](inter_f.stages[-1]), atol=1e-5)  # gated after the gate
        assert torch.allclose(f.pooled, f.stages[-1].mean((2, 3)), atol=1e-6)
        assert torch.allclose(logits, both.classifier(f.pooled), atol=1e-5)
        assert not torch.allclose(logits, bare_logits, atol=1e-4)
    assert vam_parameter_count(both) == 2 * 16
    assert models.count_parameters(both) == models.count_parameters(bare) + 32


@pytest.mark.parametrize("name", ZOO)
def test_state_dict_reloads_into_a_fresh_model_after_attach_with_the_stored_config(name):
    _, net = _bare_and_vam(name, [-2, -1])
    _randomise_gates(net)
    config = json.loads(json.dumps(net.extension_config("vam")))  # what a loader gets back from a JSON file
    fresh = _net(name, seed=7)
    attach_vam(fresh, **config)
    fresh.load_state_dict(net.state_dict())
    x = _x()
    with torch.no_grad():
        assert torch.equal(fresh(x)[0], net(x)[0])


@pytest.mark.parametrize("name", ["resnet8", "wrn_16_2"])  # forward_pre wrapper / torch hook + model-level tap
def test_a_deep_copy_routes_through_its_own_gates(name):
    _, net = _bare_and_vam(name, [-2, -1])
    x = _x()
    twin = copy.deepcopy(net)
    with torch.no_grad():
        before = net(x)[0]
        _randomise_gates(twin)
        assert torch.equal(net(x)[0], before)
        assert not torch.allclose(twin(x)[0], before, atol=1e-4)


def test_refusals_are_one_line_and_leave_the_model_untouched():
    net = _net("resnet8")  # stages: 16, 32, 64 channels
    with pytest.raises(ValueError) as e:
        attach_vam(net, [-2, -1], groups=3, init_gain=1.0, entropy_weight=0.1)
    assert "\n" not in str(e.value) and all(s in str(e.value) for s in ("stage -2", "32", "groups=3"))
    assert not hasattr(net, "vam") and vam_regulariser(net) == {} and vam_parameter_count(net) == 0
    for stages in ([3], [-1, 2], []):
        with pytest.raises(ValueError):
            attach_vam(net, stages, groups=2, init_gain=1.0, entropy_weight=0.1)
    attach_vam(net, [-1], groups=2, init_gain=1.0, entropy_weight=0.1)
    with pytest.raises(ValueError, match="already has a VAM"):
        attach_vam(net, [-2], groups=2, init_gain=1.0, entropy_weight=0.1)


def test_gradient_reaches_the_gate_logits_through_the_task_loss_and_the_regulariser():
    _, net = _bare_and_vam("resnet8", [-2, -1])
    logits, _ = net(_x())
    task = torch.nn.functional.cross_entropy(logits, torch.tensor([1, 2, 3, 4]))
    reg = vam_regulariser(net)
    assert set(reg) == {"vam_entropy"}
    expected = 0.1 * torch.stack([m.entropy() for m in net.vam]).mean()
    assert torch.allclose(reg["vam_entropy"], expected)
    assert_each_gets_gradient(task, net.vam.named_parameters())
    assert_each_gets_gradient(reg["vam_entropy"], net.vam.named_parameters())
    assert any(p is net.vam[0].logits for p in net.parameters())  # the model's optimiser trains them
