"""Sigma estimation (Cheng et al., CVPR 2020) on tiny networks whose answer is known."""
import io
import math

import pytest
import torch
from torch import nn
from tqdm import tqdm

from explain import sigma as S
from explain.params import entropy_target

G = 4  # 16x16 inputs on a 4x4 grid: 4x4-pixel cells, as 32x32 on 8x8
# lr scaled with G^2 from the 8x8 default, so the per-cell steps are the same (see SigmaParams)
PARAMS = S.SigmaParams(grid=G, lr=2.5e-5 * G * G / 64, noise_batch=16)



class LeftHalfNet(nn.Module):
    """A conv feature of the LEFT half of the image only: the right half is ignored."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(3, 8, 3, padding=1)

    def forward(self, x):
        return self.conv(x[..., :, : x.shape[-1] // 2])


def images(n=4, seed=1):
    return torch.randn(n, 3, 16, 16, generator=torch.Generator().manual_seed(seed))


@pytest.fixture(scope="module")
def half():
    net = LeftHalfNet().eval()
    x = images()
    return net, x, S.estimate_sigma(net, x, PARAMS, seed=3, progress=False)


def test_entropy_target_and_map():
    assert entropy_target(0.01, 1.4714) == pytest.approx(-2.8, abs=1e-3)
    assert S.SigmaParams(entropy_target=-2.8).target == -2.8
    assert entropy_target(0.02) == pytest.approx(entropy_target(0.01) + math.log(2))
    assert float(S.entropy_map(torch.tensor(1.0))) == pytest.approx(0.5 * math.log(2 * math.pi * math.e))


def test_ignored_half_gets_larger_sigma(half):
    _, x, r = half
    assert r.sigma.shape == (4, G, G) and r.entropy.shape == (4, G, G)
    assert r.effective.all()
    left, right = r.sigma[:, :, : G // 2], r.sigma[:, :, G // 2:]
    for i in range(len(x)):
        assert right[i].min() > left[i].max(), r.sigma[i]
    assert (right.mean() / left.mean()) > 1.3
    torch.testing.assert_close(r.entropy, torch.log(r.sigma) + S.HALF_LOG_2PI_E)


def test_entropy_matched_selection(half):
    _, _, r = half
    gap = (r.selected_entropy - r.target).abs()
    assert (gap < 0.02).all(), gap
    # the selected map is the recorded one (a copy), not the last sigma: its own mean entropy matches the
    # history at the selected step, and later steps had a different entropy
    torch.testing.assert_close(r.entropy.flatten(1).mean(1).double(), r.selected_entropy, atol=1e-5, rtol=0)
    assert ((r.selected_step + 1) < r.steps_run).all()
    ran = ~torch.isnan(r.entropy_history)
    assert ran.sum(1).tolist() == r.steps_run.tolist()
    assert torch.isnan(r.feature_loss_history[~ran]).all()
    # the feature term is ~1 at the start by construction (normalised by sigma_f at sigma0)
    assert r.feature_loss_history[:, 0].sub(1).abs().max() < 0.5
    assert r.entropy_history[:, 0].allclose(torch.full((4,), math.log(0.01) + S.HALF_LOG_2PI_E, dtype=torch.float64))
    s = S.summary(r)
    assert s["n_effective"] == 4 and s["hit_target_rate"] == 1.0


def test_probe_step_boosts_lambda_when_the_target_is_far():
    net = LeftHalfNet().eval()
    p = S.SigmaParams(**{**PARAMS.__dict__, "steps": 30, "probe_step": 10, "entropy_target": -2.0})
    r = S.estimate_sigma(net, images(2), p, progress=False)
    assert r.steps_run.tolist() == [30, 30]
    assert (r.lambda_history[:, :10] == p.lambda_h).all()
    assert torch.allclose(r.lambda_history[:, 10:], torch.tensor(p.lambda_h * p.lambda_boost, dtype=torch.float64))
    # a reachable target stops at the probe step
    p2 = S.SigmaParams(**{**p.__dict__, "entropy_target": -3.15})
    assert S.estimate_sigma(net, images(2), p2, progress=False).steps_run.tolist() == [10, 10]


def test_deterministic_for_a_seed(half):
    net, x, r = half
    again = S.estimate_sigma(net, x, PARAMS, seed=3, progress=False)
    assert torch.equal(again.sigma, r.sigma) and torch.equal(again.selected_step, r.selected_step)
    torch.testing.assert_close(again.entropy_history, r.entropy_history, rtol=0, atol=0, equal_nan=True)
    other = S.estimate_sigma(net, x, PARAMS, seed=4, progress=False)
    assert not torch.equal(other.sigma, r.sigma)


def test_batched_equals_one_at_a_time(half):
    net, x, r = half
    ref = S.estimate_sigma_reference(net, x, PARAMS, seed=3)
    assert torch.equal(ref.selected_step, r.selected_step)
    assert torch.equal(ref.steps_run, r.steps_run)
    torch.testing.assert_close(ref.sigma, r.sigma, atol=1e-7, rtol=1e-5)
    torch.testing.assert_close(ref.entropy_history, r.entropy_history, atol=1e-6, rtol=0, equal_nan=True)
    torch.testing.assert_close(ref.feature_loss_history, r.feature_loss_history, atol=1e-5, rtol=1e-5,
                               equal_nan=True)
    torch.testing.assert_close(ref.sigma_f, r.sigma_f, atol=0, rtol=1e-5)


def test_an_images_map_does_not_depend_on_its_batch(half):
    net, x, r = half
    # a subset, reordered, with the dataset ids, in chunks of one image per forward
    p = S.SigmaParams(**{**PARAMS.__dict__, "max_samples": PARAMS.noise_batch})
    sub = S.estimate_sigma(net, x[[2, 0]], p, seed=3, image_ids=[2, 0], progress=False)
    torch.testing.assert_close(sub.sigma, r.sigma[[2, 0]], atol=1e-7, rtol=1e-5)
    assert torch.equal(sub.selected_step, r.selected_step[[2, 0]])


def test_sensitive_patch_gets_the_lowest_sigma():
    w = torch.ones(1, 1, 16, 16)
    w[..., 4:8, 8:12] = 10.0  # grid cell (1, 2)

    def weighted(x):
        return w * x

    r = S.estimate_sigma(weighted, images(2), PARAMS, progress=False)
    for i in range(2):
        assert int(r.sigma[i].argmin()) == 1 * G + 2
        assert r.sigma[i, 1, 2] < 0.8 * r.sigma[i].flatten()[torch.arange(G * G) != 6].min()


def test_dead_feature_is_flagged_non_effective():
    x = images(3)
    x[1] = -50.0  # relu(x + 0.01 noise) is 0 everywhere: sigma_f = 0
    for estimate in (S.estimate_sigma, S.estimate_sigma_reference):
        r = estimate(torch.relu, x, PARAMS, progress=False)
        assert r.effective.tolist() == [True, False, True]
        assert r.sigma_f[1] == 0 and r.selected_step[1] == -1 and r.steps_run[1] == 0
        assert torch.isnan(r.sigma[1]).all() and torch.isnan(r.entropy[1]).all()
        assert torch.isfinite(r.sigma[[0, 2]]).all()
        assert S.summary(r)["n_effective"] == 2


def test_progress_bar_and_outputs():
    net = LeftHalfNet().eval()
    with tqdm(total=2 * PARAMS.steps, file=io.StringIO()) as bar:
        for _ in range(2):
            r = S.estimate_sigma(net, images(2), PARAMS, progress=bar)
        assert bar.n == 2 * PARAMS.steps  # the steps skipped after the probe stop are counted too
    arrays = r.as_numpy()
    assert arrays["sigma"].shape == (2, G, G) and arrays["entropy_history"].shape == (2, PARAMS.steps)
    assert r.params["grid"] == G
    with pytest.raises(ValueError):
        S.estimate_sigma(net, torch.zeros(2, 3, 16, 16, dtype=torch.uint8), PARAMS, progress=False)


def test_model_feature_fn_on_a_zoo_model():
    import models

    model = models.create("resnet8", 10)
    model.train()
    fn = S.model_feature_fn(model, "stages", -1)
    assert not model.training  # eval mode: BN running statistics
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert fn(x).shape == (2, 64, 8, 8)
        assert S.model_feature_fn(model, "pooled")(x).shape == (2, 64)
        assert S.model_feature_fn(model, "logits")(x).shape == (2, 10)
    with pytest.raises(ValueError):
        S.model_feature_fn(model, "nope")
    # gradients reach sigma only: nothing accumulates in the weights
    S.estimate_sigma(fn, x, S.SigmaParams(steps=2, probe_step=1, noise_batch=2), progress=False)
    assert all(p.grad is None for p in model.parameters())
