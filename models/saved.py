"""Loading a saved network: ``load_model`` rebuilds any kdlens ``model.pt`` exactly as it was evaluated.

A ``model.pt`` holds ``{"model": state_dict, "meta": {...}}``; the meta names the architecture, the class
count, any VAM gates (models/vam.py, part of the student's weights) and, for a method whose parts stay in
the student at test time (letKD's KD layers), that method and the config its parts are rebuilt from
(saved under ``"method"``). Those parts are the method's code, which lives above this package, so the
caller hands in how to rebuild them (``methods.restore_parts``); a loader of teachers needs none.
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable

import torch
from torch import nn

from core import checkpoint
from core.device import device
from core.errors import KdlensError

from . import registry
from .base import Classifier
from .vam import attach_vam

METHOD_PARTS = "method_parts"  # the extension holding a method's test-time parts (saved as method_parts.*)
# (network, method name, the parts' config) -> the parts, rebuilt and wired into the network's forward
PartsRestorer = Callable[[Classifier, str, dict], nn.Module]


def load_model(path: str | Path, dev: torch.device | None = None,
               restore_parts: PartsRestorer | None = None) -> Classifier:
    """Rebuild the network saved at ``path`` with its weights, on ``dev`` (default: ``core.device``).
    ``restore_parts`` rebuilds a method's test-time parts; without it such a network is refused."""
    state = checkpoint.load(path, required=("model", "meta"))
    meta = state["meta"]
    model = registry.create(meta["arch"], meta["num_classes"])
    if meta.get("vam"):
        attach_vam(model, **meta["vam"])
    if meta.get("method_parts"):
        if restore_parts is None:
            raise KdlensError(f"{path}: a {meta.get('method')} student that keeps the method's layers at test "
                              "time; it cannot be loaded here (e.g. as a teacher): point to a plain network")
        parts = restore_parts(model, meta["method"], meta["method_parts"])
        model.attach_extension(METHOD_PARTS, parts, [], meta["method_parts"])
    try:
        load_weights(model, state)
    except RuntimeError as e:
        raise KdlensError(f"{path}: weights do not fit {meta['arch']} ({str(e).splitlines()[0]}); "
                          "re-run the stage that writes it") from None
    return model.to(dev or device())


def load_weights(model: nn.Module, state: dict) -> None:
    """Load a model.pt or kept checkpoint into a ``load_model`` network (method parts included)."""
    weights = state["model"]
    if model.has_extension(METHOD_PARTS):
        weights = {**weights, **{f"{METHOD_PARTS}.{k}": v for k, v in state["method"].items()}}
    model.load_state_dict(weights)
