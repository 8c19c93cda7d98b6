"""The interface every solve method implements, and its registry."""

from __future__ import annotations

import dataclasses
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from pipeline.adapters import LayerAdapter, ModelAdapter
from pipeline.engine_shapes import constrained_block, constrained_curves, width_multiple
from pipeline.modegpt import ModuleCurve
from pipeline.plan import LayerPlan
from pipeline.planning import cut_fraction, layer_sparsities, plan_from_curves, plan_layer, plan_layers

# A settings field with this metadata is worked out from other config fields in ``from_config``, not a config field.
DERIVED = {"derived": True}


@dataclass(frozen=True)
class MethodSettings:
    """A method's solver settings, and the compression schema's fields for them: each field (with its type, default
    and comment) is a ``compression`` field of the same name (``pipeline.config.compression_schema`` adds it), read
    back by name, so a new setting is one field here."""

    @classmethod
    def config_fields(cls) -> list[dataclasses.Field]:
        """The fields that are ``compression`` fields (all but ``DERIVED`` ones)."""
        return [f for f in dataclasses.fields(cls) if not f.metadata.get("derived")]

    @classmethod
    def config_values(cls, compression: Any) -> dict[str, Any]:
        return {f.name: compression[f.name] for f in cls.config_fields()}

    @classmethod
    def from_config(cls, compression: Any) -> MethodSettings:
        return cls(**cls.config_values(compression))

    @classmethod
    def check(cls, compression: Any, check: Callable[[bool, str, Any, str], None]) -> None:
        """Refuse values of these fields that their types allow but the solve cannot use, by calling
        ``check(ok, key, value, expected)`` (``pipeline.config.validate`` passes its one-line refusal)."""


@dataclass(frozen=True)
class SolveInputs:
    """What a method's plan may read besides its compression settings: the run's config (for its artifact paths
    and calibration), the dense model, its correlation store, and the layers' Block Influence."""

    cfg: Any
    adapter: ModelAdapter
    store: Any  # pipeline.capture.CorrelationStore
    store_fingerprint: str
    block_influence: Tensor
    device: torch.device


class Method(ABC):
    """One compression method. Subclasses that set ``name`` register themselves in :data:`Method.registry`."""

    name: ClassVar[str]
    needs_store: ClassVar[bool]  # solve reads each layer's correlation sums (else weights only)
    assemblable: ClassVar[bool]  # its factors build a compressed checkpoint that assemble / evaluate take
    error_allocation: ClassVar[bool] = False  # implements error_curves (compression.allocation=error)
    # reads the store and implements apply_in_place (compression.sequential=true)
    sequential_calibration: ClassVar[bool] = False
    settings_type: ClassVar[type[MethodSettings]] = MethodSettings  # the compression fields solve_layer reads
    registry: ClassVar[dict[str, type[Method]]] = {}

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        name = cls.__dict__.get("name")
        if name is None:
            return
        if name in Method.registry:
            raise TypeError(f"method {name!r} is registered twice")
        Method.registry[name] = cls

    def settings(self, compression: Any) -> MethodSettings:
        """The settings ``solve_layer`` takes, read from ``compression`` by field name."""
        return self.settings_type.from_config(compression)

    def plan(self, inputs: SolveInputs, target_rate: float, compression: Any) -> list[LayerPlan]:
        """Each layer's sparsity and kept widths: by default the configured allocation (Block Influence or
        uniform) of ``target_rate`` over the layers, each layer cut to its sparsity; with ``allocation=error``
        one budget across every module of every layer from the method's error curves (``error_curves``)."""
        k, adapter = compression, inputs.adapter
        block, multiple = constrained_block(adapter.block_shape(), k.shape), width_multiple(k)
        if k.shape == "stock":  # one width for every layer: the family's own class holds it
            return [plan_layer(target_rate, block, multiple)] * adapter.num_layers
        if k.allocation == "error":
            curves = self.error_curves(inputs, k)
            return plan_from_curves(constrained_curves(curves, block), target_rate, block)
        # max_sparsity caps the cut modules' sparsity: a layer loses at most that share of what it may cut
        cap = k.max_sparsity * cut_fraction(block)
        phi = layer_sparsities(inputs.block_influence, target_rate, k.allocation, k.temperature, cap)
        return plan_layers(phi, block, multiple, target_rate)

    def error_curves(self, inputs: SolveInputs, compression: Any) -> list[dict[str, ModuleCurve]]:
        """Every layer's error-versus-width curve per module, for ``compression.allocation=error``."""
        raise NotImplementedError(f"compression.method={self.name} does not support compression.allocation=error")

    @abstractmethod
    def solve_layer(self, layer: LayerAdapter, adapter: ModelAdapter, sums: dict[str, Tensor] | None,
                    plan: LayerPlan, settings: Any, device: torch.device
                    ) -> tuple[dict[str, Tensor], dict[str, float]]:
        """The tensors stored for one layer (factors on CPU) and its reconstruction errors (may be empty);
        ``settings``: this method's ``settings(compression)``."""

    def apply_in_place(self, layer: LayerAdapter, adapter: ModelAdapter, tensors: dict[str, Tensor]) -> None:
        """Write one solved layer (``solve_layer``'s tensors) into its dense block, keeping the dense shapes, so the
        block computes the compressed layer: ``compression.sequential`` then captures the next layer's statistics
        on the outputs of the compressed layers below it."""
        raise NotImplementedError(f"compression.method={self.name} does not support compression.sequential=true")

    def in_memory_model(self, dense: nn.Module, family: str, solve_dir: Path) -> nn.Module:
        """A copy of ``dense`` with this method's solved factors applied (for methods that do not assemble a
        checkpoint: ``benchmarks/quality.py`` evaluates them this way)."""
        raise NotImplementedError(f"{self.name} assembles a checkpoint: build it with pipeline.assembly instead")

    @abstractmethod
    def removed_params(self, adapter: ModelAdapter, plans: list[LayerPlan], stored_numel: list[int]) -> int:
        """Parameters removed from the dense model; ``stored_numel`` is each layer file's element count."""


class UnknownMethodError(ValueError):
    """A method name no registered method has; the message is one line."""


def method_named(name: str) -> Method:
    if name not in Method.registry:
        known = ", ".join(Method.registry)
        raise UnknownMethodError(f"compression.method={name!r} is invalid: expected one of {known}")
    return Method.registry[name]()
