"""Solve methods: MoDeGPT and the baselines, each one registered object the solve stage and the CLI consult.

A method says whether it reads the correlation store, how it solves one layer, how many parameters its
factors remove, and whether they assemble into a checkpoint; nothing outside this package branches on a
method's name. Every module here is imported below, and each :class:`Method` subclass with a ``name``
registers itself, so a new method is one new file.
"""

from __future__ import annotations

import importlib
import pkgutil

from .base import Method, MethodSettings, SolveInputs, UnknownMethodError, method_named

for _module in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_module.name}")

METHODS: dict[str, type[Method]] = Method.registry

__all__ = ["METHODS", "Method", "MethodSettings", "SolveInputs", "UnknownMethodError", "method_named"]
