"""Importing a network trained elsewhere: ``load_checkpoint(arch, path, num_classes)``.

The CIFAR distillation literature compares students of the same pretrained teachers (the CIFAR-100
teachers of Tian et al., "Contrastive Representation Distillation", ICLR 2020, re-used by Zhao et al.,
"Decoupled Knowledge Distillation", CVPR 2022). Recognised files, tried in this order:

* a kdlens ``model.pt`` (``{"model", "meta"}``): rebuilt by ``models.saved.load_model``;
* the reference frameworks' checkpoints, ``{"model": state_dict, "epoch", "accuracy", "optimizer"}``, or a
  ``{"state_dict": ...}`` dict, or a bare state dict; a ``module.`` prefix (DataParallel) is dropped.
  Keys already in kdlens's names load as they are; otherwise the architecture's ``reference_keys``
  (registered with it, ``models.registry``) renames the reference's names (``conv1``/``layer1``/``fc``,
  ``block1``, ``features``, ...) to kdlens's. The architectures are the same networks, so the imported one
  computes the same logits and features as the original.

Every tensor must fit: a file that does not stops with one line naming the arch, the first missing,
unexpected or mis-shaped key and, when the file fits another architecture, that one. BatchNorm's
``num_batches_tracked`` counter, absent from files older than PyTorch 0.4.1, is not required (it does
not change the outputs). Files load with ``weights_only=True`` (``core.checkpoint``).
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Callable

import torch

from core import checkpoint
from core.errors import KdlensError

from . import registry
from .base import Classifier
from .saved import load_model

KDLENS = "kdlens model.pt"
KDLENS_KEYS = "state dict in kdlens's key names"
REFERENCE = "reference CIFAR checkpoint (RepDistiller / mdistiller key names)"
OPTIONAL = "num_batches_tracked"  # BatchNorm's step counter: absent from old files, unused at test time
_NOT_IMPORTED = ("ltb", "ltb_w16")  # kdlens's own learned-structure students: nothing to import them from


class CheckpointMismatch(KdlensError):
    pass


def renamer(*rules: tuple[str, str | Callable[[re.Match], str]]) -> registry.StateRename:
    """A state-dict rename from (regex, replacement) rules, applied in order to every key (``re.sub``, each
    rule on the result of the previous ones). A replacement may be a function of the match (index shifts)."""
    compiled = [(re.compile(pattern), repl) for pattern, repl in rules]

    def rename(weights: dict) -> dict:
        out = {}
        for key, value in weights.items():
            for pattern, repl in compiled:
                key = pattern.sub(repl, key)
            out[key] = value
        return out

    return rename


def shifted(group: int, by: int, template: str) -> Callable[[re.Match], str]:
    """A replacement that writes ``template`` with the match's ``group`` as an integer plus ``by``:
    ``shifted(1, -1, "stages.{}.")`` turns ``layer3.`` into ``stages.2.``."""
    return lambda m: template.format(int(m.group(group)) + by)


def state_dict_of(state: dict, path: Path) -> dict:
    """The tensors of a reference checkpoint, a ``state_dict`` wrapper or a bare state dict."""
    for wrapper in ("model", "state_dict"):
        if isinstance(state.get(wrapper), dict):
            state = state[wrapper]
            break
    if not state or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointMismatch(f"{path}: holds no state dict (expected a tensor per key, or one under 'model' "
                                 "or 'state_dict'); point teacher.checkpoint at a network's weights")
    return {k.removeprefix("module."): v for k, v in state.items()}


def misfit(expected: dict, weights: dict) -> str | None:
    """The first key of ``weights`` that does not fit ``expected`` (a model's state dict), or None."""
    missing = [k for k in expected if k not in weights and not k.endswith(OPTIONAL)]
    if missing:
        return f"missing key {missing[0]!r} ({len(missing)} missing)"
    unexpected = [k for k in weights if k not in expected]
    if unexpected:
        return f"unexpected key {unexpected[0]!r} ({len(unexpected)} unexpected)"
    for k, v in weights.items():
        if v.shape != expected[k].shape:
            return f"{k!r} has shape {list(v.shape)} in the file, {list(expected[k].shape)} in the model"
    return None


def candidates(weights: dict, arch: str) -> list[tuple[str, dict]]:
    """The readings of ``weights`` for ``arch``: as they are (kdlens keys), then renamed from the reference."""
    readings = [(KDLENS_KEYS, weights)]
    rename = registry.reference_keys(arch)
    if rename is not None:
        readings.append((REFERENCE, rename(weights)))
    return readings


def expected_state(arch: str, num_classes: int) -> dict:
    """``arch``'s state dict as shapes only (meta tensors: no memory, no initialisation); an unknown arch
    fails here, naming the choices."""
    with torch.device("meta"):
        return registry.create(arch, num_classes).state_dict()


def fitting(arch: str, weights: dict, num_classes: int) -> tuple[str, dict] | None:
    """(layout, renamed weights) of the first reading that fits ``arch`` exactly; None if none does."""
    expected = expected_state(arch, num_classes)
    return next(((layout, w) for layout, w in candidates(weights, arch) if misfit(expected, w) is None), None)


def other_fit(arch: str, weights: dict, num_classes: int) -> str | None:
    """Another architecture the file's keys fit (same class count), to name in the error."""
    return next((a for a in registry.names() if a not in (arch, *_NOT_IMPORTED) and fitting(a, weights, num_classes)),
                None)


def _kdlens_file(state: dict, arch: str, num_classes: int | None, path: Path) -> bool:
    """Whether ``state`` is a kdlens model.pt; one of another arch or class count is refused."""
    if "meta" not in state or "model" not in state:
        return False
    meta = state["meta"]
    if meta.get("arch") != arch or num_classes not in (None, meta.get("num_classes")):
        raise CheckpointMismatch(f"{path}: a kdlens {meta.get('arch')} model with {meta.get('num_classes')} classes, "
                                 f"not {arch} with {num_classes}; set the arch to {meta.get('arch')} or point to "
                                 "another file")
    return True


def _fit(arch: str, weights: dict, num_classes: int, path: Path) -> tuple[str, dict]:
    found = fitting(arch, weights, num_classes)
    if found is not None:
        return found
    problem = misfit(expected_state(arch, num_classes), candidates(weights, arch)[-1][1])
    other = other_fit(arch, weights, num_classes)
    hint = f"; its keys fit {other}: set the arch to {other}" if other else "; check the arch and the class count"
    raise CheckpointMismatch(f"{path}: does not fit {arch} with {num_classes} classes: {problem}{hint}")


def check_checkpoint(arch: str, path: str | Path, num_classes: int | None = None) -> str:
    """The file's layout, if it fits ``arch`` (with ``num_classes``, or the class count its head has):
    ``import_checkpoint``'s checks without building the network, for ``check_params`` before any work."""
    path = Path(path)
    state = checkpoint.load(path)
    if _kdlens_file(state, arch, num_classes, path):
        return KDLENS
    weights = state_dict_of(state, path)
    if num_classes is None:
        key = head_key(arch)
        heads = [w[key] for _, w in candidates(weights, arch) if key in w]
        num_classes = int(heads[0].shape[0]) if heads else 1
    return _fit(arch, weights, num_classes, path)[0]


def head_key(arch: str) -> str:
    """The state-dict key of ``arch``'s head weight: ``classifier.weight`` for kdlens's own families, the
    torchvision name for torchvision's models (``fc.weight``, ``classifier.1.weight``)."""
    with torch.device("meta"):
        return registry.create(arch, 1).head_prefix() + "weight"


def import_checkpoint(arch: str, path: str | Path, num_classes: int) -> tuple[Classifier, str]:
    """(network on the CPU in eval mode, the file's layout). Raises ``CheckpointMismatch`` in one line."""
    path = Path(path)
    expected_state(arch, num_classes)  # an unknown arch fails first, before the file is read
    state = checkpoint.load(path)
    if _kdlens_file(state, arch, num_classes, path):
        return load_model(path, torch.device("cpu")).eval(), KDLENS
    layout, weights = _fit(arch, state_dict_of(state, path), num_classes, path)
    model = registry.create(arch, num_classes)
    model.load_state_dict(weights, strict=False)  # strict on every key but OPTIONAL, checked by misfit
    return model.eval(), layout


def load_checkpoint(arch: str, path: str | Path, num_classes: int) -> Classifier:
    """The network ``arch`` with the weights of the file at ``path`` (any layout above), on the CPU."""
    return import_checkpoint(arch, path, num_classes)[0]
