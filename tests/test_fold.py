"""BatchNorm folding (models/fold.py): same outputs on every zoo model, and it really folds."""
import pytest
import torch
from torch import nn

import models
from models.fold import fold_batchnorm


def _randomised_bn(model: nn.Module) -> nn.Module:
    """Non-trivial running statistics and affine parameters, as a trained network has."""
    g = torch.Generator().manual_seed(1)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            n = m.num_features
            m.running_mean.copy_(torch.randn(n, generator=g) * 0.3)
            m.running_var.copy_(torch.rand(n, generator=g) + 0.5)
            m.weight.data.copy_(torch.rand(n, generator=g) + 0.5)
            m.bias.data.copy_(torch.randn(n, generator=g) * 0.2)
    return model.eval()


def _flat(out):
    logits, f = out
    return [logits, f.stem, *f.stages, *f.preact, f.pooled]


@pytest.mark.parametrize("name", models.names())
def test_folded_model_gives_the_same_logits_and_features(name):
    torch.manual_seed(0)
    model = _randomised_bn(models.create(name, 10))
    folded, count = fold_batchnorm(model)
    assert count > 0
    bns = sum(isinstance(m, nn.BatchNorm2d) for m in model.modules())
    assert sum(isinstance(m, nn.BatchNorm2d) for m in folded.modules()) == bns - count
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        ref, got = _flat(model(x)), _flat(folded(x))
    for a, b in zip(ref, got):
        torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-4 * max(1.0, a.abs().max().item()))
    assert all(not p.requires_grad for p in folded.parameters())
    assert any(isinstance(m, nn.BatchNorm2d) for m in model.modules())  # the original is untouched


def test_a_conv_output_read_twice_keeps_its_batchnorm():
    class Twice(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 3, padding=1)
            self.bn = nn.BatchNorm2d(4)

        def forward(self, x):
            y = self.conv(x)
            return self.bn(y) + y  # y is read by the BN and by the add: folding would change the sum

    model = _randomised_bn(Twice())
    folded, count = fold_batchnorm(model)
    assert count == 0 and isinstance(folded.bn, nn.BatchNorm2d)
