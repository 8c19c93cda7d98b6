"""Model adapters: all architecture knowledge lives here, one file per family."""

from __future__ import annotations

from torch import nn

from .base import BlockShape, HeadLayout, LayerAdapter, ModelAdapter
from .llama import LlamaAdapter
from .opt import OptAdapter

ADAPTERS: dict[str, type[ModelAdapter]] = {a.family: a for a in (LlamaAdapter, OptAdapter)}


def adapter_for(model: nn.Module, family: str | None = None) -> ModelAdapter:
    """The adapter for ``model``: by family name if given, else by its HF ``config.model_type``."""
    if family is not None:
        if family not in ADAPTERS:
            raise ValueError(f"unknown model family {family!r}: expected one of {', '.join(ADAPTERS)}")
        return ADAPTERS[family](model)
    model_type = getattr(model.config, "model_type", None)
    for cls in ADAPTERS.values():
        if model_type in cls.model_types:
            return cls(model)
    known = sorted(t for cls in ADAPTERS.values() for t in cls.model_types)
    raise ValueError(f"no adapter for model_type {model_type!r}: supported are {', '.join(known)}")


__all__ = ["ADAPTERS", "BlockShape", "HeadLayout", "LayerAdapter", "ModelAdapter", "adapter_for"]
