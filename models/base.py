"""The one contract every architecture follows, so no method ever special-cases a family.

``forward(x)`` returns ``(logits, Features)``:

* ``stem``   - output of the input stem (post-activation).
* ``stages`` - output of every stage, shallow to deep, post-activation. ``stages[-1]`` is the final
  pre-pooling map (the CAM feature): global average pooling of it is exactly ``pooled``.
* ``preact`` - the same maps taken before the stage's final activation (for OFD / ReviewKD / AB).
* ``pooled`` - the embedding fed to ``model.classifier``.

Every model has ``model.classifier``: an ``nn.Linear`` whose ``in_features`` equals the channel count
of ``stages[-1]``, so ``mean_hw(stages[-1]) @ W.T + b == logits`` (CAM-based methods rely on it).
Families whose reference code taps a pre-BN map (WRN) or a narrower map (MobileNetV2, ShuffleNetV2)
expose the post-BN-ReLU / final 1x1-conv map instead, as Exp-KD's code does.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, ClassVar

import torch
from torch import nn


@dataclass
class Features:
    stem: torch.Tensor
    stages: list[torch.Tensor]
    preact: list[torch.Tensor]
    pooled: torch.Tensor
    extras: dict[str, Any] = field(default_factory=dict)  # what an extension adds (letKD's layer scores)


class _SlotHandle:
    """Removes one stage slot. An object rather than a closure (as the slots themselves should be), so that
    ``copy.deepcopy`` of an extended model gives handles and slots bound to the copy's modules."""

    def __init__(self, model: "Classifier", index: int, fn: Callable[[torch.Tensor], torch.Tensor]):
        self.model, self.index, self.fn = model, index, fn

    def __call__(self) -> None:
        fns = self.model._stage_slots.get(self.index, [])
        if self.fn in fns:
            fns.remove(self.fn)
        if not fns:
            self.model._stage_slots.pop(self.index, None)


class Classifier(nn.Module):
    """Base class: subclasses implement ``extract(x) -> Features``; the head is shared.

    The hooks below have no-op defaults; a family overrides those it has (the LTB tree student: all of
    them), and the trainer, the training job and the report call them without probing the model.
    Extensions (VAM's gates, letKD's KD layers) are modules wired into the forward after construction:
    ``attach_extension`` registers one by name with the functions that unwire it.
    """

    classifier: nn.Linear
    exposes_features: ClassVar[bool] = True  # intermediate maps a feature method can match (LTB: no)
    has_stage_slots: ClassVar[bool] = True  # its extract() passes each stage output through the slots
    learns_structure: ClassVar[bool] = False  # a stage 1 learns its structure, then freeze_structure() (LTB)

    def __init__(self):
        super().__init__()
        self._extensions: dict[str, tuple[list[Callable[[], None]], dict]] = {}
        self._stage_slots: dict[int, list[Callable[[torch.Tensor], torch.Tensor]]] = {}
        self.forward_extras: dict[str, Any] = {}  # what the slots note during one forward (Features.extras)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, Features]:
        if self._stage_slots:
            self.forward_extras = {}
        feats = self.extract(x)
        if self._stage_slots:
            feats.extras.update(self.forward_extras)
        return self.classifier(feats.pooled), feats

    # -- stage slots: where an extension changes a stage's output map -------------------------------
    def add_stage_slot(self, index: int, fn: Callable[[torch.Tensor], torch.Tensor]) -> Callable[[], None]:
        """Pass ``Features.stages[index]`` through ``fn(map) -> map`` where the family computes it, so the
        later stages, ``pooled`` and the logits see ``fn``'s output (the pre-activation map stays as it
        was); slots on one stage run in the order they were added. Returns the function that removes it."""
        if not self.has_stage_slots:
            raise ValueError(f"{type(self).__name__} computes its stages inline: it has no stage slots")
        self._stage_slots.setdefault(index, []).append(fn)
        return _SlotHandle(self, index, fn)

    def through_slots(self, i: int, n: int, fmap: torch.Tensor) -> torch.Tensor:
        """(for ``extract``) Stage ``i`` of ``n``'s output map through the slots of stage ``i`` (or ``i - n``)."""
        if self._stage_slots:
            for fn in self._stage_slots.get(i, []) + self._stage_slots.get(i - n, []):
                fmap = fn(fmap)
        return fmap

    # -- hooks ------------------------------------------------------------------------------------
    def named_param_groups(self) -> dict[str, list[nn.Parameter]]:
        """Named parameter groups, each with its own ``train.group_lr`` / ``frozen_epochs``; one by default."""
        return {"weights": list(self.parameters())}

    def start_epoch(self, epoch: int) -> None:
        """Called by the trainer before each training epoch (LTB: its routing temperature)."""

    def epoch_diagnostics(self) -> dict[str, float]:
        """Merged into each epoch's training record (LTB: its gate entropies)."""
        return {}

    def stage_prefix(self, index: int) -> str:
        """The parameter-name prefix of the modules that compute ``Features.stages[index]``."""
        return f"stages.{index % len(self.stages)}."

    def stem_prefix(self) -> str:
        """The parameter-name prefix of the modules that compute ``Features.stem``."""
        return "stem."

    def head_prefix(self) -> str:
        """The parameter-name prefix of the head ``classifier``: ``classifier.`` for kdlens's families,
        torchvision's own name for its models (``fc.``, ``classifier.1.``)."""
        weight = self.classifier.weight
        return next(name for name, p in self.named_parameters() if p is weight).removesuffix("weight")

    def freeze_structure(self, like: "Classifier | None" = None) -> None:
        """(``learns_structure``) Keep the structure learned in stage 1 (or ``like``'s) from now on."""
        raise NotImplementedError(f"{type(self).__name__} learns no structure")

    def reinitialise(self) -> None:
        """(``learns_structure``) Fresh weights for stage 2, the frozen structure kept."""
        raise NotImplementedError(f"{type(self).__name__} learns no structure")

    # -- extensions -------------------------------------------------------------------------------
    def attach_extension(self, name: str, module: nn.Module | None, undo: list[Callable[[], None]],
                         config: dict | None = None) -> None:
        """Register extension ``name``: ``module`` (None when its weights belong to someone else, e.g. the
        method's), saved as ``<name>.*`` in the state dict; ``undo`` unwires it; ``config`` rebuilds it."""
        if name in self._extensions:
            raise ValueError(f"{type(self).__name__} already has the extension {name!r}")
        if module is not None:
            self.add_module(name, module)
        self._extensions[name] = (list(undo), dict(config or {}))

    def detach_extension(self, name: str) -> None:
        """Unwire and remove extension ``name`` (no-op if there is none)."""
        undo, _ = self._extensions.pop(name, ([], {}))
        for fn in undo:
            fn()
        if name in self._modules:
            del self._modules[name]

    def has_extension(self, name: str) -> bool:
        return name in self._extensions

    def extension_config(self, name: str) -> dict | None:
        """The ``config`` extension ``name`` was attached with (None without it)."""
        return self._extensions[name][1] if name in self._extensions else None

    def extract(self, x: torch.Tensor) -> Features:  # pragma: no cover - abstract
        raise NotImplementedError

    def bn_before_relu(self) -> list[nn.Module]:
        """The BatchNorm that produces each stage's pre-activation map (OFD's margins). Optional."""
        raise NotImplementedError(f"{type(self).__name__} does not expose its pre-ReLU BatchNorms")


def feature_shapes(model: Classifier, input_size: int = 32, channels: int = 3) -> dict:
    """Shapes (without batch) of every named feature, found by one dummy forward in eval mode."""
    was_training = model.training
    model.eval()
    try:
        device = next(model.parameters()).device
        with torch.no_grad():
            logits, feats = model(torch.zeros(2, channels, input_size, input_size, device=device))
    finally:
        model.train(was_training)
    return {
        "stem": tuple(feats.stem.shape[1:]),
        "stages": [tuple(f.shape[1:]) for f in feats.stages],
        "preact": [tuple(f.shape[1:]) for f in feats.preact],
        "pooled": tuple(feats.pooled.shape[1:]),
        "logits": tuple(logits.shape[1:]),
    }


def count_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())
