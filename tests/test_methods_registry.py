"""Every registered method: defaults in params.yaml, per-term gradients on real zoo pairs, clear refusals."""
import pytest
import torch
import yaml

import methods
import models
from tiny_profile import ROOT

# Pairs of the reference benchmarks (teacher -> student), same- and cross-family, plus the default pair.
PAIRS = [
    ("resnet20", "resnet8"),
    ("resnet32x4", "resnet8x4"),
    ("wrn_40_2", "wrn_16_2"),
    ("vgg13", "vgg8"),
    ("vgg13", "MobileNetV2"),
    ("resnet32x4", "ShuffleV1"),
    ("resnet32x4", "ShuffleV2"),
    ("ResNet50", "MobileNetV2"),
    ("wrn_40_2", "resnet8"),
]
NUM_CLASSES, BATCH, N_TRAIN = 10, 4, 64


def test_params_yaml_lists_every_method_with_every_key_of_its_schema():
    """Every key is listed; a value other than the schema's default is the default profile's choice, and
    test_params checks that its line says why."""
    listed = yaml.safe_load((ROOT / "params.yaml").read_text())["methods"]
    assert sorted(listed) == methods.names()
    for name in methods.names():
        defaults = methods.params_class(name)().model_dump(mode="json")
        assert sorted(listed[name]) == sorted(defaults), name


_models: dict = {}


def _model(name):
    if name not in _models:
        torch.manual_seed(0)
        _models[name] = models.create(name, NUM_CLASSES)
    return _models[name]


@pytest.mark.parametrize("teacher_name, student_name", PAIRS)
def test_every_method_serves_the_pair_or_refuses_in_one_line(teacher_name, student_name):
    teacher, student = _model(teacher_name).eval(), _model(student_name).train()
    torch.manual_seed(1)
    x = torch.randn(BATCH, 3, 32, 32)
    y = torch.arange(BATCH) % NUM_CLASSES
    index = torch.arange(BATCH)
    with torch.no_grad():
        t_out, t_out_flipped = teacher(x), teacher(x.flip(3))
    for name in methods.names():
        ctx = methods.MethodContext(student=student, teacher=teacher, num_classes=NUM_CLASSES, num_train=N_TRAIN,
                                    input_size=32, train_labels=torch.arange(N_TRAIN) % NUM_CLASSES)
        try:
            method = methods.create(name, methods.params_class(name)(), ctx)
        except methods.MethodNotApplicable as e:
            assert str(e) and "\n" not in str(e), name
            continue
        method.train()
        student.zero_grad(set_to_none=True)
        s_out = student(x)
        # An extra view (mlkd's strong one) stands in as the mirrored batch.
        views = {v: methods.ViewOutputs(student(x.flip(3)), t_out_flipped) for v in method.extra_views}
        # Late epoch, so loss warm-ups are complete and every term is active.
        terms = method.losses(s_out, t_out, y, index, epoch=1000, **({"views": views} if views else {}))
        assert terms and all(t.dim() == 0 and torch.isfinite(t) for t in terms.values()), (name, terms)
        # Its label terms, by name: what DOT (training/optimizers.py) keeps apart from the distillation ones.
        assert method.task_terms <= set(terms), (name, sorted(method.task_terms), sorted(terms))
        sum(terms.values()).backward()
        grad = sum(p.grad.abs().sum() for p in student.parameters() if p.grad is not None)
        assert grad > 0, f"{name}: no gradient reaches {student_name}"
        assert all(p.grad is None for p in teacher.parameters()), f"{name}: gradient leaked into the teacher"
