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
import torch
from torch import nn

from . import mobilenetv2, resnet, resnetv2, shufflenetv1, shufflenetv2, vgg, wrn

ARCHS = {**resnet.ARCHS, **resnetv2.ARCHS, **wrn.ARCHS, **vgg.ARCHS, **mobilenetv2.ARCHS, **shufflenetv1.ARCHS,
         **shufflenetv2.ARCHS}


def randomised(net: nn.Module, seed: int) -> nn.Module:
    """Random weights and random BN running statistics, so a swapped layer or a missed buffer shows."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.weight.copy_(torch.rand(m.weight.shape, generator=g) * 0.5 + 0.25)  # deep nets stay finite
                m.bias.copy_(torch.randn(m.bias.shape, generator=g) * 0.1)
                m.running_mean.copy_(torch.randn(m.running_mean.shape, generator=g) * 0.1)
                m.running_var.copy_(torch.rand(m.running_var.shape, generator=g) + 0.5)
                m.num_batches_tracked.fill_(int(torch.randint(1, 10**5, (1,), generator=g)))
            elif isinstance(m, (nn.Conv2d, nn.Linear)):
                m.weight.copy_(torch.randn(m.weight.shape, generator=g) * m.weight[0].numel() ** -0.5)
                if m.bias is not None:
                    m.bias.copy_(torch.randn(m.bias.shape, generator=g) * 0.1)
    return net.eval()


def save_reference(net: nn.Module, path) -> None:
    """As the reference frameworks save a teacher: weights under 'model', with epoch, accuracy, optimizer."""
    opt = torch.optim.SGD(net.parameters(), lr=0.05, momentum=0.9)
    net(torch.zeros(2, 3, 32, 32))[0].sum().backward()
    opt.step()  # the optimizer state holds momentum buffers, as a real one does
    opt.zero_grad()
    torch.save({"model": net.state_dict(), "epoch": 240, "accuracy": 72.34, "optimizer": opt.state_dict()}, path)
