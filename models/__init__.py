"""kdlens model zoo: ``create(name, num_classes)`` builds any registered architecture.

Importing this package registers every family. CIFAR: ResNets (``resnet``), ImageNet-style ResNets with a
CIFAR stem (``resnetv2``), WideResNets (``wrn``), VGG-BN (``vgg``), MobileNetV2 (``mobilenetv2``),
ShuffleNet v1/v2 (``shufflenetv1``/``shufflenetv2``) and KDExplainer's LTB tree student (``ltb``, ``ltb_w16``).
ImageNet: torchvision's ResNet18/34/50/101 (``imagenet_resnet``: ``imagenet_resnet18`` ...), torchvision's
MobileNetV2 and the reference MobileNetV1 (``imagenet_mobilenet``: ``imagenet_mobilenet_v2``,
``imagenet_mobilenet_v1``), in torchvision's / mdistiller's parameter names.
Every model follows the ``Classifier`` contract in ``models.base``; LTB alone has no linear ``classifier``
(its ``exposes_features`` is False).
"""
from . import (imagenet_mobilenet, imagenet_resnet, ltb, mobilenetv2, resnet, resnetv2,  # noqa: F401 (register)
               shufflenetv1, shufflenetv2, vgg, wrn)
from .base import Classifier, Features, count_parameters, feature_shapes
from .imported import CheckpointMismatch, import_checkpoint, load_checkpoint
from .registry import UnknownModelError, create, family, names, register

__all__ = ["CheckpointMismatch", "Classifier", "Features", "UnknownModelError", "count_parameters", "create",
           "family", "feature_shapes", "import_checkpoint", "load_checkpoint", "names", "register"]
