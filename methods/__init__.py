"""Distillation methods: one file each, registered by name (see methods/base.py for the contract)."""
from . import ce, kd  # noqa: F401  (registration side effects)
from .base import Method, MethodContext, MethodNotApplicable, MethodParams
from .registry import create, get, names, params_class

__all__ = ["Method", "MethodContext", "MethodNotApplicable", "MethodParams", "create", "get", "names",
           "params_class"]
