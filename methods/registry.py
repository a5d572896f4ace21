"""Methods by name. Each method file registers its class; ``create`` builds one for a student/teacher."""
from __future__ import annotations

from .base import Method, MethodContext, MethodParams

_METHODS: dict[str, type[Method]] = {}


def register(cls: type[Method]) -> type[Method]:
    if cls.name in _METHODS:
        raise ValueError(f"method {cls.name!r} registered twice")
    _METHODS[cls.name] = cls
    return cls


def names() -> list[str]:
    return sorted(_METHODS)


def get(name: str) -> type[Method]:
    if name not in _METHODS:
        raise ValueError(f"unknown method {name!r}; choose one of: {', '.join(names())}")
    return _METHODS[name]


def params_class(name: str) -> type[MethodParams]:
    return get(name).Params


def create(name: str, params: MethodParams, ctx: MethodContext) -> Method:
    return get(name)(params, ctx)
