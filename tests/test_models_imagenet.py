"""The ImageNet models (models/imagenet_resnet.py, models/imagenet_mobilenet.py): the Features contract,
torchvision's own networks and weights, BN folding, and the reference's ImageNet distillation methods on
its two ImageNet pairs (ResNet34 -> ResNet18, ResNet50 -> MobileNetV1).

The checks run at 64x64 (the stages at 16, 8, 4, 2 instead of 224's 56, 28, 14, 7) with 10 classes, to
stay within seconds on two CPU cores; one checks the 224 layout itself.
"""
from __future__ import annotations

import functools

import pytest
import torch
import torch.nn.functional as F
import torchvision
from torch import nn

import methods
import models
from method_helpers import assert_terms_send_gradient
from models.base import count_parameters, feature_shapes
from models.fold import fold_batchnorm
from reference_layouts import randomised

pytestmark = pytest.mark.cost(10)

SIZE, NUM_CLASSES = 64, 10

_BASIC = [(64, 16, 16), (128, 8, 8), (256, 4, 4), (512, 2, 2)]
_BOTTLENECK = [(256, 16, 16), (512, 8, 8), (1024, 4, 4), (2048, 2, 2)]
# name -> (torchvision builder or None, stem (C,H,W), stages (C,H,W)) at 64x64
EXPECTED = {
    "imagenet_resnet18": (torchvision.models.resnet18, (64, 32, 32), _BASIC),
    "imagenet_resnet34": (torchvision.models.resnet34, (64, 32, 32), _BASIC),
    "imagenet_resnet50": (torchvision.models.resnet50, (64, 32, 32), _BOTTLENECK),
    "imagenet_resnet101": (torchvision.models.resnet101, (64, 32, 32), _BOTTLENECK),
    "imagenet_mobilenet_v2": (torchvision.models.mobilenet_v2, (32, 32, 32),
                              [(24, 16, 16), (32, 8, 8), (96, 4, 4), (320, 2, 2), (1280, 2, 2)]),
    "imagenet_mobilenet_v1": (None, (32, 32, 32), [(128, 16, 16), (256, 8, 8), (512, 4, 4), (1024, 2, 2)]),
}
TORCHVISION = sorted(n for n, (build, _, _) in EXPECTED.items() if build is not None)
# MobileNetV2's blocks end linearly (stage == preact); its 1280 tap ends in ReLU6.
LINEAR_STAGES = {"imagenet_mobilenet_v2": {0, 1, 2, 3}}
PAIRS = [("imagenet_resnet34", "imagenet_resnet18"), ("imagenet_resnet50", "imagenet_mobilenet_v1")]
# The methods mdistiller runs on ImageNet (its configs/imagenet), at their defaults.
IMAGENET_METHODS = ["kd", "dkd", "at", "crd", "ofd", "reviewkd"]


def inputs(batch: int = 2) -> torch.Tensor:
    return torch.randn(batch, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(0))


@functools.lru_cache(maxsize=None)
def run(name: str):
    """(model, logits, features) of one eval-mode forward of a fixed batch of 2."""
    model = randomised(models.create(name, NUM_CLASSES), seed=1)
    with torch.no_grad():
        logits, feats = model(inputs())
    return model, logits, feats


def test_registered_with_their_family():
    assert {n for n in models.names() if n.startswith("imagenet_")} == set(EXPECTED)
    for name in EXPECTED:
        assert models.family(name) is type(run(name)[0])


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_features_and_the_cam_identity(name):
    model, logits, feats = run(name)
    _, stem, stages = EXPECTED[name]
    assert feature_shapes(model, SIZE) == {"stem": stem, "stages": stages, "preact": stages,
                                           "pooled": (stages[-1][0],), "logits": (NUM_CLASSES,)}
    head = model.classifier
    assert isinstance(head, nn.Linear) and head.in_features == stages[-1][0]
    torch.testing.assert_close(feats.pooled, feats.stages[-1].mean(dim=(2, 3)))
    torch.testing.assert_close(feats.pooled @ head.weight.T + head.bias, logits)
    for i, (pre, post) in enumerate(zip(feats.preact, feats.stages)):
        if i in LINEAR_STAGES.get(name, ()):
            torch.testing.assert_close(pre, post)
        else:
            act = F.relu6 if name == "imagenet_mobilenet_v2" else F.relu
            torch.testing.assert_close(act(pre), post)
            assert (pre < 0).any()  # really before the activation
    bns = model.bn_before_relu()
    assert [bn.num_features for bn in bns] == [c for c, _, _ in stages]
    params = dict(model.named_parameters())
    for i in range(len(stages)):
        assert any(k.startswith(model.stage_prefix(i)) for k in params), model.stage_prefix(i)


@pytest.mark.parametrize("name", ["imagenet_resnet18", "imagenet_mobilenet_v1", "imagenet_mobilenet_v2"])
def test_shapes_at_224(name):
    """The reference ImageNet layout: stages at 56, 28, 14, 7 (mdistiller's MobileNetV1 feats 128..1024)."""
    _, _, stages = EXPECTED[name]
    want = [(c, 224 * h // SIZE, 224 * w // SIZE) for c, h, w in stages]
    assert feature_shapes(models.create(name, NUM_CLASSES), 224)["stages"] == want


def test_mobilenet_v1_is_table_1_in_the_reference_names():
    """Howard et al., Table 1 (4.2 M parameters at 1000 classes), in mdistiller's ``model.<i>.<j>`` / ``fc``."""
    with torch.device("meta"):
        net = models.create("imagenet_mobilenet_v1", 1000)
    assert abs(count_parameters(net) / 1e6 - 4.2) < 0.05
    state = net.state_dict()
    bn = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")
    want = {"model.0.0.weight", *(f"model.0.1.{k}" for k in bn), "fc.weight", "fc.bias"}
    for i in range(1, 14):
        want |= {f"model.{i}.0.weight", f"model.{i}.3.weight", *(f"model.{i}.{j}.{k}" for j in (1, 4) for k in bn)}
    assert set(state) == want
    widths = [32, 64, 128, 128, 256, 256, 512, 512, 512, 512, 512, 512, 1024, 1024]
    assert [state[f"model.{i}.{0 if i == 0 else 3}.weight"].shape[0] for i in range(14)] == widths
    assert [net.model[i][0].stride[0] for i in range(14)] == [2, 1, 2, 1, 2, 1, 2, 1, 1, 1, 1, 1, 2, 1]


@pytest.mark.parametrize("name", TORCHVISION)
def test_torchvision_state_dict_loads_unmapped_and_gives_its_logits(name, tmp_path):
    """A torchvision network's state dict (as torchvision's weight files hold it) is this model's: it loads
    through the teacher import as it is, and the model computes torchvision's logits."""
    build = EXPECTED[name][0]
    tv = randomised(build(weights=None, num_classes=NUM_CLASSES), seed=2)
    torch.save(tv.state_dict(), tmp_path / "weights.pth")
    net, layout = models.import_checkpoint(name, tmp_path / "weights.pth", NUM_CLASSES)
    assert layout == models.imported.KDLENS_KEYS
    assert set(net.state_dict()) == set(tv.state_dict())
    with torch.no_grad():
        torch.testing.assert_close(net(inputs())[0], tv(inputs()))


@pytest.mark.parametrize("name", ["imagenet_resnet18", "imagenet_resnet50", "imagenet_mobilenet_v1",
                                  "imagenet_mobilenet_v2"])
def test_fold_batchnorm_keeps_the_outputs(name):
    model, logits, feats = run(name)
    folded, count = fold_batchnorm(model, input_size=SIZE)
    assert count > 0
    with torch.no_grad():
        got, got_feats = folded(inputs())
    tol = dict(rtol=1e-4, atol=1e-4 * float(logits.abs().max()))
    torch.testing.assert_close(got, logits, **tol)
    torch.testing.assert_close(got_feats.stages[-1], feats.stages[-1], rtol=1e-4,
                               atol=1e-4 * float(feats.stages[-1].abs().max()))


@pytest.mark.parametrize("name", ["imagenet_resnet18", "imagenet_mobilenet_v1", "imagenet_mobilenet_v2"])
def test_stage_slots_change_what_follows(name):
    """VAM / letKD attach through the stage slots: zeroing the last stage leaves only the head's bias."""
    model, logits, _ = run(name)
    remove = model.add_stage_slot(-1, torch.zeros_like)
    try:
        with torch.no_grad():
            got, _ = model(inputs())
    finally:
        remove()
    torch.testing.assert_close(got, model.classifier.bias.expand_as(got))
    with torch.no_grad():
        torch.testing.assert_close(model(inputs())[0], logits)


@functools.lru_cache(maxsize=None)
def pair(teacher: str, student: str):
    torch.manual_seed(0)
    return models.create(teacher, NUM_CLASSES).eval(), models.create(student, NUM_CLASSES)


def context(teacher, student) -> methods.MethodContext:
    labels = torch.arange(4 * NUM_CLASSES) % NUM_CLASSES  # as training/fitter.py's check_pair, 4 per class
    return methods.MethodContext(student=student, teacher=teacher, num_classes=NUM_CLASSES, num_train=len(labels),
                                 input_size=SIZE, train_labels=labels)


@pytest.mark.parametrize("teacher_name,student_name", PAIRS, ids=lambda n: n.removeprefix("imagenet_"))
@pytest.mark.parametrize("method", IMAGENET_METHODS)
def test_imagenet_methods_train_on_the_reference_pairs(method, teacher_name, student_name):
    teacher, student = pair(teacher_name, student_name)
    m = methods.create(method, methods.params_class(method)(), context(teacher, student))
    x = torch.randn(4, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(2))
    y = torch.tensor([0, 3, 5, 9])
    with torch.no_grad():
        out_t = teacher(x)
    terms = m.losses(student(x), out_t, y, torch.arange(4), epoch=1)
    assert set(terms) > {"ce"}
    assert_terms_send_gradient(terms, student)  # each term finite, with a finite non-zero student gradient


@pytest.mark.parametrize("teacher_name,student_name,crd_dims,review_in,review_out", [
    ("imagenet_resnet34", "imagenet_resnet18", (512, 512), [64, 128, 256, 512, 512], [64, 128, 256, 512, 512]),
    ("imagenet_resnet50", "imagenet_mobilenet_v1", (1024, 2048), [128, 256, 512, 1024, 1024],
     [256, 512, 1024, 2048, 2048]),
], ids=["resnet34-resnet18", "resnet50-mobilenet_v1"])
def test_per_pair_dims_are_the_references(teacher_name, student_name, crd_dims, review_in, review_out):
    """What mdistiller's ImageNet configs set by hand (CRD's feature dims, ReviewKD's channels and shapes)
    kdlens derives from the feature shapes."""
    teacher, student = pair(teacher_name, student_name)
    ctx = context(teacher, student)
    crd = methods.create("crd", methods.params_class("crd")(), ctx)
    assert (crd.embed_s.linear.in_features, crd.embed_t.linear.in_features) == crd_dims
    review = methods.create("reviewkd", methods.params_class("reviewkd")(), ctx)
    assert [abf.reduce[0].in_channels for abf in review.abfs] == review_in
    assert [abf.project[0].out_channels for abf in review.abfs] == review_out
    # mdistiller's shapes [1, 7, 14, 28, 56] at 224 (listed deep -> shallow): at 64, shallow -> deep
    assert [h for h, _ in review.out_sizes] == [16, 8, 4, 2, 1]
