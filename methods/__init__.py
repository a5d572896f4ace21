"""Distillation methods: one file each, registered by name (see methods/base.py for the contract).

Every module in this package is imported here, so a new method is one new file with ``@register``.
"""
import importlib
import pkgutil

from .base import Method, MethodContext, MethodNotApplicable, MethodParams, Phase
from .registry import create, get, names, params_class

_NOT_METHODS = {"base", "registry", "common"}
for _info in pkgutil.iter_modules(__path__):
    if _info.name not in _NOT_METHODS and not _info.name.startswith("_"):
        importlib.import_module(f"{__name__}.{_info.name}")

__all__ = ["Method", "MethodContext", "MethodNotApplicable", "MethodParams", "Phase", "create", "get", "names",
           "params_class"]
