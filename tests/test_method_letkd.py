"""letkd1 / letkd2: the KD layer and the loss by hand, per-term gradients, the layers inside the evaluated
student, parameter counts, cross-family pairs (torch-hook and forward_pre wiring paths)."""
import numpy as np
import pytest
import torch

import methods
import models
from methods.letkd import supervision as sup
from methods.letkd.params import SupervisionParams
from method_helpers import assert_each_gets_gradient, assert_terms_send_gradient
from methods.letkd.method import CosConv, KDLayer, inter_targets, letkd_kl, penult_targets, unwire

NUM_CLASSES, BATCH = 10, 4


def _np_softmax(a):
    e = np.exp(a - a.max(1, keepdims=True))
    return e / e.sum(1, keepdims=True)


def _np_cos(x, w, scale):
    """x [C, L] locations as columns, w [K, C] -> scale * cosine similarity [K, L]."""
    xn = x / np.linalg.norm(x, axis=0, keepdims=True)
    wn = w / np.linalg.norm(w, axis=1, keepdims=True)
    return scale * wn @ xn


# ------------------------------------------------------------------------------------------- by hand
def test_penultimate_loss_by_hand():
    f_t = np.array([[1.0, 0.0], [0.0, 2.0]])  # two locations (rows) of a 2-channel teacher map, 1x2 grid
    rho = np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    tau = 0.5
    s = np.array([[1.0, 0.0, -1.0], [0.5, 0.5, 2.0]])  # student scores per location
    d2 = ((f_t[:, None, :] - rho[None]) ** 2).sum(-1)  # [[0, 2, 1], [5, 1, 2]]
    p = _np_softmax(-tau * d2)
    log_q = np.log(_np_softmax(s))
    expected = float(np.mean((p * (np.log(p) - log_q)).sum(1)))

    f_map = torch.tensor(f_t.T, dtype=torch.float32).reshape(1, 2, 1, 2)
    s_map = torch.tensor(s.T, dtype=torch.float32).reshape(1, 3, 1, 2)
    target = penult_targets(f_map, torch.tensor(rho, dtype=torch.float32), tau)
    assert np.allclose(target.numpy(), p, atol=1e-6)
    assert letkd_kl(s_map, target).item() == pytest.approx(expected, rel=1e-5)
    assert letkd_kl(s_map, target).item() > 0.1


def test_intermediate_target_by_hand():
    # z = (f - xbar) @ W; class 1's sub-classes are rows 2, 3 of the centres (2 sub-classes per class)
    w, xbar = np.array([[1.0, 0.0], [0.0, 2.0]]), np.array([1.0, 0.0])
    centers = np.array([[0.0, 0.0], [5.0, 5.0], [0.0, 1.0], [3.0, 3.0]])
    decision = np.array([[0.7, 0.1, 0.1, 0.1], [0.0, 1.0, 0.0, 0.0], [0.2, 0.0, 0.8, 0.0], [0.0, 0.5, 0.0, 0.5]])
    f = np.array([[1.0, 0.0], [4.0, 1.5]])  # z = (0, 0): nearest overall is class 0's centre, but y = 1 -> 2
    #                                          z = (3, 3): class 1's centre 3
    expected = decision[[2, 3]]
    t = lambda a: torch.tensor(a, dtype=torch.float32)  # noqa: E731
    got = inter_targets(t(f.T).reshape(1, 2, 1, 2), torch.tensor([1]), t(w), t(xbar), t(centers), t(decision), 2)
    assert np.allclose(got.numpy(), expected)


def test_cosconv_and_kd_layer_by_hand():
    torch.manual_seed(0)
    x = torch.randn(1, 3, 2, 2)
    conv = CosConv(3, 4, scale=2.5)
    out = conv(x)
    cols = x[0].reshape(3, -1).numpy()
    assert np.allclose(out[0].reshape(4, -1).detach().numpy(), _np_cos(cols, conv.weight.detach().numpy(), 2.5),
                       atol=1e-5)
    assert out.abs().max() <= 2.5 + 1e-5  # cosine scores lie in [-s, s]

    layer = KDLayer(3, 4, alpha=0.5).eval()  # fresh BN in eval: (s - 0) / sqrt(1 + eps)
    x_hat, s = layer(x)
    s_np = _np_cos(cols, layer.predictor.weight.detach().numpy(), 3.0)
    v_np = _np_cos(np.maximum(s_np / np.sqrt(1 + 1e-5), 0), layer.value.weight.detach().numpy(), 1.0)
    assert np.allclose(s[0].reshape(4, -1).detach().numpy(), s_np, atol=1e-5)
    assert np.allclose(x_hat[0].reshape(3, -1).detach().numpy(), cols + 0.5 * v_np, atol=1e-5)


# ------------------------------------------------------------------------------------- with real nets
def _supervision(teacher, n=20, input_size=32, **cfg):
    """The library's supervision arrays from the teacher's features on random images (no files)."""
    cfg = SupervisionParams(**{"k": 8, "iterations": 5, "lda_dim": 3, "subclasses": 2, **cfg})
    torch.manual_seed(123)
    x = torch.randn(n, 3, input_size, input_size)
    labels = np.arange(n) % NUM_CLASSES
    with torch.no_grad():
        feats = teacher.eval()(x)[1]
    maps = {"penult": (feats.stages[-1], cfg.penult_size), "inter": (feats.stages[cfg.inter_stage], cfg.inter_size)}
    rows = {k: sup.location_rows(m, side).numpy() for k, (m, side) in maps.items()}
    grids = {k: [side or m.shape[-1]] * 2 for k, (m, side) in maps.items()}
    built = sup.from_features(rows["penult"], rows["inter"], labels, grids, NUM_CLASSES, cfg)
    return {**built.arrays, "card": built.info}


def _setup(name, teacher_name="resnet14", student_name="resnet8", **cfg):
    torch.manual_seed(0)
    teacher, student = models.create(teacher_name, NUM_CLASSES).eval(), models.create(student_name, NUM_CLASSES)
    supervision = _supervision(teacher, **cfg)
    ctx = methods.MethodContext(student=student, teacher=teacher, num_classes=NUM_CLASSES, num_train=20,
                                input_size=32, train_labels=torch.arange(20) % NUM_CLASSES, supervision=supervision)
    return methods.create(name, methods.params_class(name)(), ctx), student, teacher


def _batch():
    torch.manual_seed(1)
    return torch.randn(BATCH, 3, 32, 32), torch.arange(BATCH) % NUM_CLASSES


@pytest.mark.parametrize("name, terms", [("letkd1", {"ce", "penult"}), ("letkd2", {"ce", "penult", "inter"})])
def test_every_term_sends_gradient_to_the_student_and_the_layers_learn(name, terms):
    method, student, teacher = _setup(name)
    method.train(), student.train()
    x, y = _batch()
    with torch.no_grad():
        t_out = teacher(x)
    out = method.losses(student(x), t_out, y, torch.arange(BATCH), epoch=1)
    assert set(out) == terms and all(v > 0 for v in out.values())
    assert_terms_send_gradient(out, student)
    # the KD layers learn: the predictors from their KL term, the value paths (and BN) through the CE
    assert_each_gets_gradient(sum(out.values()), method.named_parameters())
    assert_each_gets_gradient(out["penult"], method.penult.predictor.named_parameters())
    sum(out.values()).backward()
    assert all(p.grad is None for p in teacher.parameters())


def test_extra_parameter_count_by_hand():
    # resnet8 student: last stage 64 channels (K = k = 8), stage -2 32 channels (K = 10 classes x 2 = 20).
    # per layer: 2·K·C kernel weights + 2K BN affine + 2 scales + (2K + 1) BN buffers
    penult = 2 * 8 * 64 + 2 * 8 + 2 + 2 * 8 + 1
    inter = 2 * 20 * 32 + 2 * 20 + 2 + 2 * 20 + 1
    assert _setup("letkd1")[0].extra_parameter_count() == penult == 1059
    assert _setup("letkd2")[0].extra_parameter_count() == penult + inter == 2422


def test_the_evaluated_student_is_the_network_with_its_kd_layers():
    method, student, _ = _setup("letkd1")
    x, _ = _batch()
    student.eval()
    running = method.penult.bn.running_mean.clone()
    with torch.no_grad():
        logits = student(x)[0]
        assert not method.penult.training  # follows the student's mode (the trainer switches only the student)
        assert torch.equal(method.penult.bn.running_mean, running)  # evaluation does not touch BN statistics
        unwire(student)
        bare_logits, bare = student(x)
        expected = student.classifier(method.penult(bare.stages[-1])[0].mean(dim=(2, 3)))
    assert torch.allclose(logits, expected, atol=1e-5)
    assert not torch.allclose(logits, bare_logits, atol=1e-3)


@pytest.mark.parametrize("teacher_name, student_name", [("resnet14", "resnet8"), ("wrn_16_2", "wrn_16_1")])
def test_the_intermediate_layer_feeds_the_rest_of_the_student(teacher_name, student_name):
    # resnet8: stage -2 is a Stage whose parent calls forward_pre directly (instance wrapper);
    # wrn_16_1: stage -2 comes from a WideBasic called as a module (torch forward hook)
    method, student, _ = _setup("letkd2", teacher_name, student_name)
    x, _ = _batch()
    student.eval()
    with torch.no_grad():
        logits, feats = student(x)
        assert set(feats.extras["letkd_scores"]) == {"penult", "inter"}
        method.inter.alpha = 0.0  # value path off: the network changes downstream of the intermediate layer
        assert not torch.allclose(student(x)[0], logits, atol=1e-4)
    # building another letKD method on the same student replaces the wiring instead of stacking it
    ctx = method.ctx
    again = methods.create("letkd1", methods.params_class("letkd1")(), ctx)
    with torch.no_grad():
        assert set(student(x)[1].extras["letkd_scores"]) == {"penult"}
    assert again.extra_parameter_count() < method.extra_parameter_count()


def test_cross_family_pair_needs_the_pooled_grid_then_trains():
    with pytest.raises(methods.MethodNotApplicable, match=r"2x2 but the supervision grid is 4x4 \(set "
                                                          r"supervision.penult_size=2\)") as e:
        _setup("letkd2", "vgg8", "MobileNetV2")
    assert "\n" not in str(e.value)
    method, student, teacher = _setup("letkd2", "vgg8", "MobileNetV2", penult_size=2, inter_size=2)
    method.train(), student.train()
    x, y = _batch()
    with torch.no_grad():
        t_out = teacher(x)
    out = method.losses(student(x), t_out, y, torch.arange(BATCH), epoch=1)
    assert set(out) == {"ce", "penult", "inter"} and all(torch.isfinite(v) for v in out.values())
    sum(out.values()).backward()
    assert student.classifier.weight.grad.abs().sum() > 0


def test_without_supervision_the_method_refuses_in_one_line():
    s, t = models.create("resnet8", NUM_CLASSES), models.create("resnet14", NUM_CLASSES)
    ctx = methods.MethodContext(student=s, teacher=t, num_classes=NUM_CLASSES, num_train=8)
    with pytest.raises(methods.MethodNotApplicable, match="needs the teacher-derived supervision"):
        methods.create("letkd2", methods.params_class("letkd2")(), ctx)


@pytest.mark.parametrize("name", ["letkd1", "letkd2"])
def test_saved_student_reloads_with_its_kd_layers(name, tmp_path):
    """model.pt keeps the KD layers' weights and config; load_model rebuilds the student as evaluated."""
    from core import checkpoint
    from core.errors import KdlensError
    from models.saved import load_model

    method, student, _ = _setup(name)
    with torch.no_grad():  # trained-looking layers: move every KD-layer weight off its init
        for p in method.parameters():
            p.add_(0.1 * torch.randn_like(p))
    meta = {"arch": "resnet8", "num_classes": NUM_CLASSES, "method": name, "method_parts": method.test_time_config()}
    checkpoint.save(tmp_path / "model.pt", {"model": student.state_dict(), "meta": meta, "method": method.state_dict()})
    with pytest.raises(KdlensError, match=f"a {name} student that keeps the method's layers"):
        load_model(tmp_path / "model.pt", torch.device("cpu"))  # e.g. as a teacher: refused in one line
    loaded = load_model(tmp_path / "model.pt", torch.device("cpu"), methods.restore_parts).eval()
    student.eval()
    method.eval()
    x, _ = _batch()
    with torch.no_grad():
        (z, f), (z2, f2) = student(x), loaded(x)
        bare = models.create("resnet8", NUM_CLASSES)
        bare.load_state_dict(student.state_dict())
        z_bare = bare.eval()(x)[0]
    torch.testing.assert_close(z2, z)
    assert set(f2.extras["letkd_scores"]) == set(f.extras["letkd_scores"])
    assert not torch.allclose(z_bare, z)  # without its layers the student is another network
