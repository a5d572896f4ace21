"""Networks in the reference frameworks' CIFAR layout (module and key names of the RepDistiller /
mdistiller zoo), written here from each architecture's description in its paper and the reference
tables, not copied from any repository. ``tests/test_import.py`` fills them with random weights *and*
random BatchNorm running statistics, saves them as the reference frameworks save a teacher, and checks
that ``models.load_checkpoint`` gives a kdlens network with the same logits and features.

Each module here defines ``ARCHS``: {kdlens arch name: a builder ``(num_classes) -> nn.Module``}. A
reference network's ``forward(x)`` returns ``(logits, maps)``: ``maps`` holds the stem output, the stage
outputs and the pooled embedding, keyed as kdlens's ``Features`` (``stem``, ``stages``, ``pooled``) and
computed where kdlens's definitions of those maps say they are taken.
"""
from . import mobilenetv2, resnet, resnetv2, shufflenetv1, shufflenetv2, vgg, wrn

ARCHS = {**resnet.ARCHS, **resnetv2.ARCHS, **wrn.ARCHS, **vgg.ARCHS, **mobilenetv2.ARCHS, **shufflenetv1.ARCHS,
         **shufflenetv2.ARCHS}
