"""Architectures by name: ``create(name, num_classes)``. Families register themselves on import."""
from __future__ import annotations

from typing import Annotated, Callable

from pydantic import AfterValidator

from .base import Classifier

_BUILDERS: dict[str, Callable[[int], Classifier]] = {}


class UnknownModelError(ValueError):
    pass


def register(name: str):
    def deco(builder: Callable[[int], Classifier]):
        if name in _BUILDERS:
            raise ValueError(f"model {name!r} registered twice")
        _BUILDERS[name] = builder
        return builder

    return deco


def names() -> list[str]:
    return sorted(_BUILDERS)


def create(name: str, num_classes: int) -> Classifier:
    if name not in _BUILDERS:
        raise UnknownModelError(f"unknown model {name!r}; choose one of: {', '.join(names())}")
    return _BUILDERS[name](num_classes)


def _known_arch(name: str) -> str:
    if name not in names():
        raise ValueError(f"unknown model {name!r}; choose one of: {', '.join(names())}")
    return name


ArchName = Annotated[str, AfterValidator(_known_arch)]  # a params field naming a registered architecture
