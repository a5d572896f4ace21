"""Fold each eval-mode BatchNorm into the convolution that feeds it, for a frozen network's forward.

In eval mode BN is the affine map y = γ·(x − μ)/√(σ² + ε) + β per channel. When x is exactly a conv's
output and nothing else reads that output, the map can move into the conv: W' = W·s, b' = (b − μ)·s + β
with s = γ/√(σ² + ε), and the BN becomes the identity. Same outputs up to float rounding, one pass over
the activations fewer per BN.

Which BN follows which conv is found on a dummy forward, not from the model's code, so every family is
served the same way: a BN is folded only if its input tensor is a conv's output tensor *and* autograd
shows that tensor feeding the BN alone (a conv output also returned as a feature or also added to a
shortcut keeps its BN). Pre-activation blocks (BN → ReLU → conv, as in WRN) have no such pair and keep
their BNs.
"""
from __future__ import annotations

import copy

import torch
from torch import nn


def _conv_bn_pairs(model: nn.Module, sample: torch.Tensor) -> list[tuple[str, str]]:
    """(conv name, bn name) pairs where the BN reads the conv's output and nothing else does."""
    produced: dict[int, str] = {}  # id of a conv's output tensor -> conv name
    read_by_bn: list[tuple[str, torch.Tensor]] = []
    handles = []
    for name, m in model.named_modules():
        if isinstance(m, nn.Conv2d) and m.padding_mode == "zeros":
            handles.append(m.register_forward_hook(
                lambda mod, inp, out, name=name: produced.__setitem__(id(out), (name, out))))
        elif isinstance(m, nn.BatchNorm2d) and m.affine and m.track_running_stats:
            handles.append(m.register_forward_hook(
                lambda mod, inp, out, name=name: read_by_bn.append((name, inp[0], out))))
    try:
        with torch.enable_grad():
            outputs = model(sample.requires_grad_(True))
    finally:
        for h in handles:
            h.remove()
    # How many autograd nodes (and returned tensors) read each node's result.
    readers: dict[torch.autograd.graph.Node, int] = {}
    roots = [t for t in _tensors(outputs) if t.grad_fn is not None]
    for t in roots:
        readers[t.grad_fn] = readers.get(t.grad_fn, 0) + 1
    seen, stack = set(), [t.grad_fn for t in roots]
    while stack:
        node = stack.pop()
        if node in seen:
            continue
        seen.add(node)
        for child, _ in node.next_functions:
            if child is not None:
                readers[child] = readers.get(child, 0) + 1
                stack.append(child)
    pairs = []
    for bn_name, x, _ in read_by_bn:
        hit = produced.get(id(x))
        if hit is not None and hit[1] is x and readers.get(x.grad_fn, 0) == 1:
            pairs.append((hit[0], bn_name))
    return pairs


def _tensors(obj):
    if isinstance(obj, torch.Tensor):
        yield obj
    elif isinstance(obj, (list, tuple)):
        for o in obj:
            yield from _tensors(o)
    elif hasattr(obj, "__dataclass_fields__"):
        for f in obj.__dataclass_fields__:
            yield from _tensors(getattr(obj, f))


@torch.no_grad()
def fold_batchnorm(model: nn.Module, input_size: int = 32, channels: int = 3) -> tuple[nn.Module, int]:
    """An eval-mode copy of ``model`` with every foldable BN folded; returns (copy, number folded)."""
    folded = copy.deepcopy(model).eval()
    device = next(folded.parameters()).device
    pairs = _conv_bn_pairs(folded, torch.zeros(2, channels, input_size, input_size, device=device))
    modules = dict(folded.named_modules())
    for conv_name, bn_name in pairs:
        conv, bn = modules[conv_name], modules[bn_name]
        scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
        bias = conv.bias if conv.bias is not None else torch.zeros_like(bn.running_mean)
        conv.weight.mul_(scale.reshape(-1, 1, 1, 1))
        conv.bias = nn.Parameter((bias - bn.running_mean) * scale + bn.bias, requires_grad=False)
        parent_name, _, attr = bn_name.rpartition(".")
        setattr(modules[parent_name] if parent_name else folded, attr, nn.Identity())
    for p in folded.parameters():
        p.requires_grad_(False)
    return folded, len(pairs)
