"""Architectures by name: ``create(name, num_classes)``. Families register themselves on import, each
with how the reference frameworks' checkpoints of that architecture name their weights, if they have any
(``reference_keys``, read by ``models.imported``)."""
from __future__ import annotations

from functools import partial
from typing import Annotated, Callable, get_type_hints

from pydantic import AfterValidator

from .base import Classifier

_BUILDERS: dict[str, Callable[[int], Classifier]] = {}
# A state dict in the reference frameworks' key names (RepDistiller / mdistiller CIFAR zoo) -> in kdlens's.
StateRename = Callable[[dict], dict]
_REFERENCE_KEYS: dict[str, StateRename] = {}


class UnknownModelError(ValueError):
    pass


def register(name: str, reference_keys: StateRename | None = None):
    def deco(builder: Callable[[int], Classifier]):
        if name in _BUILDERS:
            raise ValueError(f"model {name!r} registered twice")
        _BUILDERS[name] = builder
        if reference_keys is not None:
            _REFERENCE_KEYS[name] = reference_keys
        return builder

    return deco


def names() -> list[str]:
    return sorted(_BUILDERS)


def create(name: str, num_classes: int) -> Classifier:
    if name not in _BUILDERS:
        raise UnknownModelError(f"unknown model {name!r}; choose one of: {', '.join(names())}")
    return _BUILDERS[name](num_classes)


def reference_keys(name: str) -> StateRename | None:
    """How ``name``'s reference checkpoints name their weights; None: the references have no such arch."""
    return _REFERENCE_KEYS.get(name)


def family(name: str) -> type[Classifier]:
    """The class ``create(name, ...)`` builds, without building one (for its class-level traits, e.g.
    ``learns_structure``): the builder itself, the class a ``partial`` wraps, or a function's return type."""
    builder = _BUILDERS[name]
    if isinstance(builder, partial):
        builder = builder.func
    return builder if isinstance(builder, type) else get_type_hints(builder)["return"]


def _known_arch(name: str) -> str:
    if name not in names():
        raise ValueError(f"unknown model {name!r}; choose one of: {', '.join(names())}")
    return name


ArchName = Annotated[str, AfterValidator(_known_arch)]  # a params field naming a registered architecture
