"""MoDeGPT's solver settings: the compression fields its solve and curves read, by name, once per plan."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from pipeline.engine_shapes import width_multiple
from pipeline.methods.base import MethodSettings
from pipeline.modegpt import REFITS

# compression.curve_scale: the unit of the module error curves (allocation=error). kl (``PROBED_SCALES``) is measured
# by the KL probe (``probe.py``), which the curves run first; residual needs no forward pass.
CURVE_SCALES = ("residual", "kl")


@dataclass(frozen=True)
class ModegptSettings(MethodSettings):
    """Each field is the ``compression`` field of the same name (``from_config``); the defaults are the paper's
    algorithm, for the math's tests: a run takes every value from its config."""

    ridge_lambda: float = 1.0
    nystrom_ridge: float = 1e-6
    eig_floor: float = 1e-8
    round_to: int = 1
    mlp_refit: str = "paper"  # paper (ridge toward 0) | shrink (ridge toward the dense rows, kept/tokens)
    # error curves in units of: residual (E 1/‖h‖²) | kl (a KL probe's tr F: ``stats["sensitivity"]``)
    curve_scale: str = "residual"

    @classmethod
    def from_config(cls, compression: Any) -> ModegptSettings:
        """The fields by name; round_to is the shape's width multiple (``compression.round_to`` or its default)."""
        return cls(**(cls.config_values(compression) | {"round_to": width_multiple(compression)}))

    @classmethod
    def check(cls, compression: Any, check: Callable[[bool, str, Any, str], None]) -> None:
        k = compression
        check(k.ridge_lambda > 0, "compression.ridge_lambda", k.ridge_lambda, "a number > 0")
        check(k.nystrom_ridge >= 0, "compression.nystrom_ridge", k.nystrom_ridge, "a number >= 0")
        check(k.eig_floor > 0, "compression.eig_floor", k.eig_floor, "a number > 0")
        check(k.mlp_refit in REFITS, "compression.mlp_refit", k.mlp_refit, "one of " + ", ".join(REFITS))
        check(k.curve_scale in CURVE_SCALES, "compression.curve_scale", k.curve_scale,
              "one of " + ", ".join(CURVE_SCALES))
