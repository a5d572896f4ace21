"""Wiring a map transform into a zoo model's forward at a stage output, without knowing the family.

The module whose output *is* ``Features.stages[i]`` is found once by tensor identity on a dummy forward
(``stage_producer``); its output is then passed through a function (``wrap_output``): a torch forward hook,
or, for the zoo's ``forward_pre`` blocks, which their parents call directly so torch hooks never fire, an
instance-level wrapper of ``forward_pre`` that changes the output map and leaves the pre-activation map
as it was. Everything downstream of that module, and the Features, then see the transformed map. The last
stage can always be tapped at the model level (``wrap_last_stage``), since by the zoo's contract
logits = classifier(GAP(stages[-1])); that serves families that compute it inline (WRN's final BN-ReLU).

The wrappers are small callable objects rather than closures, so ``copy.deepcopy`` of a wired model binds
the copy's wrappers to the copy's modules (and to the copy of ``fn`` when ``fn`` is a module of the model).
"""
from __future__ import annotations

from typing import Callable

import torch
from torch import nn

from .base import Features
from .blocks import mean_hw

PROTOCOL = "forward_pre"  # models.blocks: blocks their parents call directly (no torch hooks fire)

MapFn = Callable[[torch.Tensor], torch.Tensor]


class _ForwardPreTap:
    """Instance-level ``forward_pre`` returning ``(fn(out), pre)`` of the wrapped one."""

    def __init__(self, forward_pre: Callable, fn: MapFn):
        self.forward_pre, self.fn = forward_pre, fn

    def __call__(self, *args, **kwargs):
        out, pre = self.forward_pre(*args, **kwargs)
        return self.fn(out), pre


class _OutputTap:
    """Forward hook replacing a module's output map by ``fn(output)``."""

    def __init__(self, fn: MapFn):
        self.fn = fn

    def __call__(self, module: nn.Module, inputs, output: torch.Tensor) -> torch.Tensor:
        return self.fn(output)


class _LastStageTap:
    """Forward hook on the model: ``stages[-1] <- fn(stages[-1])``, then pooled and logits recomputed from it."""

    def __init__(self, fn: MapFn):
        self.fn = fn

    def __call__(self, model: nn.Module, inputs, output: tuple[torch.Tensor, Features]):
        _, feats = output
        feats.stages = [*feats.stages[:-1], self.fn(feats.stages[-1])]  # the same Features: extra fields kept
        feats.pooled = mean_hw(feats.stages[-1])
        return model.classifier(feats.pooled), feats


def _restore(module: nn.Module, previous: Callable | None) -> None:
    """Put back the instance-level ``forward_pre`` that was there before (or none)."""
    if previous is None:
        module.__dict__.pop(PROTOCOL, None)
    else:
        module.__dict__[PROTOCOL] = previous


def _note_outputs(model: nn.Module, x: torch.Tensor) -> tuple[Features, dict[int, tuple[nn.Module, torch.Tensor]]]:
    """One eval-mode forward of ``model``; returns (Features, {id(tensor): (outermost submodule, tensor)}).

    Wrappers already in place (an earlier tap) stay in the forward and are restored afterwards.
    """
    seen: dict[int, tuple[nn.Module, torch.Tensor]] = {}

    def note(module, out):
        t = out[0] if isinstance(out, tuple) else out
        if isinstance(t, torch.Tensor):
            seen[id(t)] = (module, t)  # an enclosing module returning the same tensor overwrites its child

    handles, wrapped = [], []
    for m in model.modules():
        if m is model:
            continue
        if hasattr(type(m), PROTOCOL):
            def forward_pre(*a, _orig=getattr(m, PROTOCOL), _m=m, **k):
                out = _orig(*a, **k)
                note(_m, out)
                return out
            wrapped.append((m, m.__dict__.get(PROTOCOL)))
            setattr(m, PROTOCOL, forward_pre)
        else:
            handles.append(m.register_forward_hook(lambda mod, inp, out: note(mod, out)))
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            _, feats = model(x)
    finally:
        model.train(was_training)
        for h in handles:
            h.remove()
        for m, previous in wrapped:
            _restore(m, previous)
    return feats, seen


def stage_producer(model: nn.Module, index: int, input_size: int) -> nn.Module | None:
    """The submodule whose output tensor *is* ``Features.stages[index]`` (None if computed inline)."""
    x = torch.zeros(2, 3, input_size, input_size, device=next(model.parameters()).device)
    feats, seen = _note_outputs(model, x)
    found = seen.get(id(feats.stages[index]))
    return found[0] if found is not None and found[1] is feats.stages[index] else None


def wrap_output(module: nn.Module, fn: MapFn) -> Callable[[], None]:
    """Pass ``module``'s output map through ``fn(map) -> map``; returns the function that undoes it."""
    if hasattr(type(module), PROTOCOL):
        previous = module.__dict__.get(PROTOCOL)
        module.__dict__[PROTOCOL] = _ForwardPreTap(getattr(module, PROTOCOL), fn)
        return lambda: _restore(module, previous)
    return module.register_forward_hook(_OutputTap(fn)).remove


def wrap_last_stage(model: nn.Module, fn: MapFn) -> Callable[[], None]:
    """Pass ``Features.stages[-1]`` through ``fn`` at the model's output (pooled and logits follow);
    returns the function that undoes it. ``model.extract`` alone does not see it: only ``model(x)``."""
    return model.register_forward_hook(_LastStageTap(fn)).remove
