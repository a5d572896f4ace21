"""Methods by name: ``methods/<name>.py`` holds method ``<name>`` and registers its class.

Only the selected method's module is imported (``get``), so a stage reaches the code of the method it
runs and no other: the distill stage's DVC dependency ``methods/${method}.py`` is then exactly the method
code it runs, and editing another method re-runs nothing. ``names`` lists the modules without importing
them.
"""
from __future__ import annotations

import importlib
import pkgutil
from pathlib import Path
from typing import Annotated

from pydantic import AfterValidator
from torch import nn

from .base import Method, MethodContext, MethodParams

_METHODS: dict[str, type[Method]] = {}
NOT_METHODS = {"base", "registry", "common", "logits", "cam"}  # modules of this package that hold no method


def register(cls: type[Method]) -> type[Method]:
    if cls.name in _METHODS:
        raise ValueError(f"method {cls.name!r} registered twice")
    _METHODS[cls.name] = cls
    return cls


def names() -> list[str]:
    """Every method: the modules of this package other than the shared ones (packages are shared code)."""
    return sorted(m.name for m in pkgutil.iter_modules([str(Path(__file__).parent)])
                  if not m.ispkg and m.name not in NOT_METHODS and not m.name.startswith("_"))


def get(name: str) -> type[Method]:
    if name not in names():
        raise ValueError(f"unknown method {name!r}; choose one of: {', '.join(names())}")
    if name not in _METHODS:
        importlib.import_module(f"{__package__}.{name}")
        if name not in _METHODS:
            raise ValueError(f"methods/{name}.py registers no method named {name!r}")
    return _METHODS[name]


def params_class(name: str) -> type[MethodParams]:
    return get(name).Params


def create(name: str, params: MethodParams, ctx: MethodContext) -> Method:
    return get(name)(params, ctx)


def restore_parts(model: nn.Module, name: str, config: dict) -> nn.Module:
    """Rebuild method ``name``'s test-time parts into ``model`` (``models.saved.load_model``'s restorer)."""
    return get(name).restore_into(model, config)


def _known_method(name: str) -> str:
    if name not in names():
        raise ValueError(f"unknown method {name!r}; choose one of: {', '.join(names())}")
    return name


MethodName = Annotated[str, AfterValidator(_known_method)]
