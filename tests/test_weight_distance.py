"""The weight-distance recorder (Cheng et al., CVPR 2020): per-iteration path length / ||W0||, every conv/linear
layer."""
import json
import math

import pytest
import torch
from torch import nn

from explain.weight_distance import WeightDistance, layer_weights



class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4)
        self.fc = nn.Linear(4, 2)

    def forward(self, x):
        return self.fc(torch.relu(self.bn(self.conv(x))).mean((2, 3)))


def train(model, rec, epochs, steps, seed=0):
    torch.manual_seed(seed)
    opt = torch.optim.SGD(model.parameters(), lr=0.5, momentum=0.9)
    for _ in range(epochs):
        for _ in range(steps):
            x, y = torch.randn(8, 3, 6, 6), torch.randint(0, 2, (8,))
            loss = nn.functional.cross_entropy(model(x), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
            rec.after_step()
        rec.end_epoch()
    return opt


def test_tracks_every_conv_and_linear_weight_only():
    model = Net()
    assert list(layer_weights(model)) == ["conv.weight", "fc.weight"]
    assert WeightDistance(model).names == ["conv.weight", "fc.weight"]


def test_hand_made_two_step_update():
    lin = nn.Linear(2, 2)
    with torch.no_grad():
        lin.weight.copy_(torch.tensor([[3.0, 0.0], [0.0, 4.0]]))  # ||W0|| = 5
    rec = WeightDistance(lin)
    assert rec.names == ["weight"]
    with torch.no_grad():
        lin.weight += torch.tensor([[0.3, 0.0], [0.0, 0.4]])  # step norm 0.5
        lin.bias += 100.0  # biases are excluded
    rec.after_step()
    with torch.no_grad():
        lin.weight += torch.tensor([[0.0, 1.2], [0.5, 0.0]])  # step norm 1.3
    rec.after_step()
    rec.end_epoch()
    with torch.no_grad():
        lin.weight += torch.tensor([[0.0, 0.0], [0.0, 0.5]])  # step norm 0.5
    rec.after_step()
    rec.end_epoch()
    d = rec.as_dict()["layers"]["weight"]
    assert d["w0_norm"] == pytest.approx(5.0)
    assert d["per_iteration"] == pytest.approx([0.0, (0.5 + 1.3) / 5, 0.5 / 5])
    assert d["cumulative"] == pytest.approx([0.0, 0.36, 0.46])
    # per-epoch form: ||W2 - W0|| = ||[[.3, 1.2], [.5, .4]]|| = sqrt(1.94)
    assert d["per_epoch"] == pytest.approx([0.0, math.sqrt(1.94) / 5, 0.5 / 5])
    assert rec.as_dict()["steps_per_epoch"] == [0, 2, 1]


def test_epoch_zero_is_zero_and_path_bounds_displacement():
    model = Net()
    w0 = {n: p.detach().clone() for n, p in layer_weights(model).items()}
    rec = WeightDistance(model)
    assert all(v["cumulative"] == [0.0] for v in rec.as_dict()["layers"].values())
    train(model, rec, epochs=3, steps=4)
    out = rec.as_dict()
    assert out["epochs"] == [0, 1, 2, 3]
    for name, p in layer_weights(model).items():
        layer = out["layers"][name]
        assert layer["cumulative"][0] == 0.0 and layer["per_iteration"][0] == 0.0
        direct = float((p.detach() - w0[name]).norm() / w0[name].norm())
        assert layer["cumulative"][-1] >= direct - 1e-6  # triangle inequality
        assert layer["cumulative"][-1] >= layer["cumulative_per_epoch"][-1] - 1e-6
        assert all(b >= a for a, b in zip(layer["cumulative"], layer["cumulative"][1:]))
        assert layer["cumulative"][-1] > 0
    json.dumps(out)


def test_resume_matches_an_uninterrupted_run():
    torch.manual_seed(1)
    ref_model = Net()
    init = {k: v.clone() for k, v in ref_model.state_dict().items()}
    ref = WeightDistance(ref_model)
    train(ref_model, ref, epochs=1, steps=3, seed=5)  # (each train() call starts a fresh optimiser)
    train(ref_model, ref, epochs=1, steps=3, seed=6)

    model = Net()
    model.load_state_dict(init)
    rec = WeightDistance(model)
    train(model, rec, epochs=1, steps=3, seed=5)
    state = rec.state_dict()
    weights = {k: v.clone() for k, v in model.state_dict().items()}
    # "a new process": a new model; the recorder is restored AFTER the weights (checked)
    resumed = Net()
    with pytest.raises(ValueError, match="restore the model's weights first"):
        WeightDistance(resumed).load_state_dict(state)
    resumed.load_state_dict(weights)
    rec2 = WeightDistance(resumed)
    rec2.load_state_dict(state)
    train(resumed, rec2, epochs=1, steps=3, seed=6)
    assert rec2.as_dict() == ref.as_dict()
    rec2.after_step()
    with pytest.raises(RuntimeError, match="mid-epoch"):
        rec2.state_dict()
