"""Loading a saved network: ``load_model`` rebuilds any kdlens ``model.pt`` exactly as it was evaluated."""
from __future__ import annotations

from pathlib import Path

import torch

import methods
import models
from core import checkpoint
from core.device import device
from core.errors import KdlensError
from models.vam import attach_vam

METHOD_PARTS = "method_parts"  # the extension holding a method's test-time parts (saved as method_parts.*)


def load_model(path: str | Path, dev: torch.device | None = None) -> models.Classifier:
    """Rebuild a network from a kdlens ``model.pt`` as it was evaluated: architecture and class count
    from its meta, plus any VAM gates and any method parts the student keeps (letKD's KD layers)."""
    state = checkpoint.load(path, required=("model", "meta"))
    meta = state["meta"]
    model = models.create(meta["arch"], meta["num_classes"])
    if meta.get("vam"):  # the VAM gates are part of the student's weights
        attach_vam(model, **meta["vam"])
    if meta.get("method_parts"):  # e.g. letKD's KD layers, wired into the forward by restore_into
        parts = methods.get(meta["method"]).restore_into(model, meta["method_parts"])
        model.attach_extension(METHOD_PARTS, parts, [], meta["method_parts"])
    try:
        load_weights(model, state)
    except RuntimeError as e:
        raise KdlensError(f"{path}: weights do not fit {meta['arch']} ({str(e).splitlines()[0]}); "
                          "re-run the stage that writes it") from None
    return model.to(dev or device())


def load_weights(model: torch.nn.Module, state: dict) -> None:
    """Load a model.pt or kept checkpoint into a ``load_model`` network (method parts included)."""
    weights = state["model"]
    if model.has_extension(METHOD_PARTS):
        weights = {**weights, **{f"{METHOD_PARTS}.{k}": v for k, v in state["method"].items()}}
    model.load_state_dict(weights)
