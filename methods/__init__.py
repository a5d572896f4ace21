"""Distillation methods: one file each, registered by name (see methods/base.py for the contract).

A new method is one new file ``methods/<name>.py`` whose class is decorated with ``@register``;
``methods.registry`` imports a method's module only when the method is used.
"""
from .base import Method, MethodContext, MethodNotApplicable, MethodParams, Phase, ViewOutputs
from .registry import MethodName, create, get, names, params_class, restore_parts

__all__ = ["Method", "MethodContext", "MethodName", "MethodNotApplicable", "MethodParams", "Phase", "create",
           "get", "names", "params_class", "restore_parts", "ViewOutputs"]
