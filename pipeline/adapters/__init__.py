"""Model adapters: all architecture knowledge lives here, one file per family.

Every module of this package is imported here, and each adapter class with a ``family`` registers itself on
definition, so adding a family is adding one file; :data:`ADAPTERS` and everything derived from it (the
CLI's family choices, the compressed-class table, the tests' parameters) follow.
"""

from __future__ import annotations

import importlib
import pkgutil

from torch import nn

from .base import (
    MODULES,
    BlockShape,
    HeadLayout,
    LayerAdapter,
    LinearSlice,
    ModelAdapter,
    UnsupportedModelError,
    output_source,
)

for _module in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_module.name}")

ADAPTERS: dict[str, type[ModelAdapter]] = ModelAdapter.registry


def families() -> tuple[str, ...]:
    return tuple(ADAPTERS)


def tiny_model_types() -> tuple[str, ...]:
    """Every HF model type some adapter claims (each has a tiny config): what the modeling tests run over."""
    return tuple(t for cls in ADAPTERS.values() for t in cls.model_types)


def adapter_class(family: str) -> type[ModelAdapter]:
    if family not in ADAPTERS:
        raise UnsupportedModelError(f"model.family={family!r} is unknown: expected one of {', '.join(ADAPTERS)}")
    return ADAPTERS[family]


def family_of(model_type: str | None) -> str | None:
    """The family whose adapter claims ``model_type`` (a dense HF type or a compressed modegpt_* type)."""
    for family, cls in ADAPTERS.items():
        if model_type in cls.model_types or model_type == cls.compressed_model_type():
            return family
    return None


def adapter_for(model: nn.Module, family: str | None = None) -> ModelAdapter:
    """The adapter for ``model``, by its HF ``config.model_type``; ``family`` (the config's) must agree with it.

    A model type that no adapter claims is refused: copying weights by name into another family's classes
    would assemble a checkpoint that silently computes something else.
    """
    model_type = getattr(model.config, "model_type", None)
    found = family_of(model_type)
    if found is None:
        known = ", ".join(tiny_model_types())
        raise UnsupportedModelError(f"no adapter for model_type {model_type!r}: supported model types are {known}")
    if family is not None and family != found:
        adapter_class(family)  # an unknown family name gets its own message
        raise UnsupportedModelError(
            f"model.family={family!r} does not match the model, whose model_type {model_type!r} belongs to "
            f"family {found!r}: set model.family={found}"
        )
    adapter = ADAPTERS[found](model)
    adapter.check_supported()
    return adapter


__all__ = [
    "ADAPTERS",
    "MODULES",
    "BlockShape",
    "HeadLayout",
    "LayerAdapter",
    "LinearSlice",
    "ModelAdapter",
    "UnsupportedModelError",
    "adapter_class",
    "adapter_for",
    "families",
    "family_of",
    "output_source",
    "tiny_model_types",
]
