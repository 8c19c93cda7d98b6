"""MoDeGPT's solver settings: the compression fields its solve and curves read, by name, once per plan."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from pipeline.engine_shapes import width_multiple
from pipeline.methods.base import DERIVED, MethodSettings
from pipeline.modegpt import REFITS

# compression.curve_scale's choices: the units of the module error curves (allocation=error)
CURVE_SCALES = ("residual", "kl")


@dataclass(frozen=True)
class ModegptSettings(MethodSettings):
    """MoDeGPT's options. Each field is the ``compression`` field of the same name: its default here is the
    project's default, and ``conf/compression/paper.yaml`` sets the paper's value where it differs."""

    ridge_lambda: float = 1.0  # lambda of the ridge leverage scores (Type-I)
    nystrom_ridge: float = 1e-6  # relative ridge on C_JJ before solving (Type-I)
    eig_floor: float = 1e-8  # relative eigenvalue floor for C^{+-1/2} (Type-III)
    mlp_refit: str = "shrink"  # Type-I refit: shrink (ridge toward the dense rows, kept/tokens) | paper (toward 0)
    # Read by allocation=error (under validated, a candidate names its unit): each module's error in units of kl
    # (the model's output sensitivity to the module's output: the trace of the Fisher of its own predictions there,
    # by one backward pass: ``probe.py``) or residual (E 1/‖h‖², the next norm's view: no probe)
    curve_scale: str = "kl"
    round_to: int = field(default=1, metadata=DERIVED)  # the shape's width multiple (``from_config``)

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
