"""kdlens CIFAR model zoo: ``create(name, num_classes)`` builds any registered architecture.

Importing this package registers every family: CIFAR ResNets (``resnet``), ImageNet-style ResNets with a
CIFAR stem (``resnetv2``), WideResNets (``wrn``), VGG-BN (``vgg``), MobileNetV2 (``mobilenetv2``),
ShuffleNet v1/v2 (``shufflenetv1``/``shufflenetv2``) and KDExplainer's LTB tree student (``ltb``, ``ltb_w16``).
Every model follows the ``Classifier`` contract in ``models.base``; LTB alone has no linear ``classifier``
(its ``exposes_features`` is False).
"""
from . import ltb, mobilenetv2, resnet, resnetv2, shufflenetv1, shufflenetv2, vgg, wrn  # noqa: F401 (register)
from .base import Classifier, Features, count_parameters, feature_shapes
from .imported import CheckpointMismatch, import_checkpoint, load_checkpoint
from .registry import UnknownModelError, create, family, names, register

__all__ = ["CheckpointMismatch", "Classifier", "Features", "UnknownModelError", "count_parameters", "create",
           "family", "feature_shapes", "import_checkpoint", "load_checkpoint", "names", "register"]
