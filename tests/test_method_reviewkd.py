"""reviewkd: HCL against numpy, shapes derived per pair, deepest-first fusion, gradients, extra params."""
import numpy as np
import pytest
import torch

from method_helpers import assert_each_gets_gradient, assert_terms_send_gradient, make_method, make_pair, random_batch
from methods.reviewkd import hcl_loss


def _np_pool(x, size):
    b, c, h, w = x.shape
    return x.reshape(b, c, size, h // size, size, w // size).mean(axis=(3, 5))


def test_hcl_matches_numpy():
    rng = np.random.default_rng(0)
    s8, t8 = rng.normal(size=(2, 3, 8, 8)), rng.normal(size=(2, 3, 8, 8))
    s2, t2 = rng.normal(size=(2, 5, 2, 2)), rng.normal(size=(2, 5, 2, 2))
    s1, t1 = rng.normal(size=(2, 4, 1, 1)), rng.normal(size=(2, 4, 1, 1))

    def mse(a, b):
        return ((a - b) ** 2).mean()

    # 8x8: full + 1/2 @4x4 + 1/4 @2x2 + 1/8 @1x1, normalised by 1 + 1/2 + 1/4 + 1/8
    level8 = (mse(s8, t8) + 0.5 * mse(_np_pool(s8, 4), _np_pool(t8, 4)) + 0.25 * mse(_np_pool(s8, 2), _np_pool(t8, 2))
              + 0.125 * mse(_np_pool(s8, 1), _np_pool(t8, 1))) / 1.875
    # 2x2: only the 1x1 pyramid level is below the map size
    level2 = (mse(s2, t2) + 0.5 * mse(_np_pool(s2, 1), _np_pool(t2, 1))) / 1.5
    level1 = mse(s1, t1)  # 1x1: the full map only
    expected = level8 + level2 + level1
    got = hcl_loss([torch.tensor(s8), torch.tensor(s2), torch.tensor(s1)],
                   [torch.tensor(t8), torch.tensor(t2), torch.tensor(t1)]).item()
    assert abs(got - expected) < 1e-12
    assert hcl_loss([torch.tensor(t8)], [torch.tensor(t8)]).item() == 0.0


def _step(s_name, t_name, batch=4, epoch=1, **params):
    t, s = make_pair(t_name, s_name)
    m = make_method("reviewkd", s, t, **params)
    out_s, out_t, y = random_batch(s, t, batch)
    return s, t, m, out_s, out_t, m.losses(out_s, out_t, y, torch.arange(batch), epoch=epoch)


def test_reviewkd_terms_gradients_and_warmup():
    s, t, m, out_s, out_t, terms = _step("resnet8", "resnet14", epoch=5)
    assert set(terms) == {"ce", "reviewkd"}
    # the fused outputs have exactly the teacher's (pre-activation) shapes, pooled level last
    fused = m.review(m.student_levels(out_s[1]))
    targets = m.teacher_levels(out_t[1])
    assert [f.shape for f in fused] == [f.shape for f in targets]
    assert [tuple(f.shape[1:]) for f in targets] == [(16, 32, 32), (32, 16, 16), (64, 8, 8), (64, 1, 1)]
    assert abs(terms["reviewkd"].item() - 5.0 * 5 / 20 * hcl_loss(fused, targets).item()) < 1e-4
    assert_terms_send_gradient(terms, s)
    # every ABF parameter (incl. the attention convs of the fusing levels) receives gradient
    assert_each_gets_gradient(terms["reviewkd"], m.named_parameters())


def test_reviewkd_fuses_deepest_first():
    # the shallowest output depends on the deeper student stages (through the residual chain) and the
    # deepest output does not depend on the shallow ones
    t, s = make_pair("resnet14", "resnet8")
    m = make_method("reviewkd", s, t).eval()
    levels = [f.detach().requires_grad_(True) for f in m.student_levels(s(torch.randn(2, 3, 32, 32))[1])]
    outs = m.review(levels)
    g_deep = torch.autograd.grad(outs[0].sum(), levels[-1], retain_graph=True)[0]
    assert g_deep.abs().sum() > 0
    g_shallow = torch.autograd.grad(outs[-1].sum(), levels[0], allow_unused=True)[0]
    assert g_shallow is None or g_shallow.abs().sum() == 0


def test_reviewkd_extra_parameters_resnet8x4_from_resnet32x4():
    t, s = make_pair("resnet32x4", "resnet8x4", num_classes=100)
    m = make_method("reviewkd", s, t, n_train=8, num_classes=100)
    mid = 256  # min(512, pooled channels 256)

    def bn(c):  # weight, bias, running mean, running var, num_batches_tracked
        return 4 * c + 1

    expected = 0
    for c_in, c_out, fuse in [(64, 64, True), (128, 128, True), (256, 256, True), (256, 256, False)]:
        expected += c_in * mid + bn(mid) + 9 * mid * c_out + bn(c_out) + (2 * mid * 2 + 2 if fuse else 0)
    assert m.extra_parameter_count() == expected == 1812238
    assert m.out_sizes == [(32, 32), (16, 16), (8, 8), (1, 1)]  # mdistiller's OUT_SHAPES for this pair


@pytest.mark.parametrize("s_name,t_name", [("MobileNetV2", "vgg8"), ("ShuffleV1", "resnet8x4")])
def test_reviewkd_cross_family_pairs(s_name, t_name):
    # MobileNetV2 (5 stages) <- vgg8 (4): aligned from the end; its 2x2 maps are upsampled to 4x4.
    # ShuffleV1 (3 stages, 16x16 first) <- resnet8x4 (3, 32x32 first): sizes differ at every level.
    s, t, m, out_s, out_t, terms = _step(s_name, t_name, batch=2, epoch=30)
    assert len(m.abfs) == min(len(out_s[1].stages), len(out_t[1].stages)) + 1
    assert torch.isfinite(terms["reviewkd"]) and terms["reviewkd"] > 0
    grads = torch.autograd.grad(terms["reviewkd"], list(s.stem.parameters()) + list(m.parameters()))
    assert all(g.abs().sum() > 0 for g in grads)
