"""``compression.shape``: which shapes a compressed model may have, so that the engines people serve with load it.

- ``free``: any kept width for every module of every layer (per-head q/k and v/o cuts included): the best
  reconstruction, but only transformers with this project's model code runs it.
- ``deci``: attention kept whole, each layer's MLP width a multiple of ``round_to`` (256 by default: vLLM's
  DeciLM rounds ffn widths to 256, and llama.cpp's K-quants need rows of 256): the DeciLM / Nemotron-NAS layout
  that vLLM, SGLang, TensorRT-LLM and llama.cpp (``deci``) serve.
- ``stock``: attention whole and one MLP width for every layer: the family's own HF class, which every engine
  runs without custom code.

The allocator plans under the shape's constraint: the cut modules' error curves on the allowed widths only, the
others held at full width, the budget still met (:func:`constrained_curves`, :func:`constrained_block`).
"""

from __future__ import annotations

import dataclasses
from typing import Any

from pipeline.adapters import BlockShape
from pipeline.modegpt import ModuleCurve

SHAPES = ("free", "deci", "stock")
# The MLP width multiple each shape uses when compression.round_to is null.
DEFAULT_ROUND_TO = {"free": 1, "deci": 256, "stock": 256}
# Modules an engine shape may cut: the MLP's inner width only (no engine runs per-head q/k or v/o widths).
ENGINE_MODULES = frozenset({"mlp"})


def width_multiple(compression: Any) -> int:
    """The multiple every kept MLP width is rounded to: ``compression.round_to``, or the shape's default."""
    return int(compression.round_to or DEFAULT_ROUND_TO[compression.shape])


def constrained_block(block: BlockShape, shape: str) -> BlockShape:
    """The block shape whose ``compressible`` modules are those the shape lets the solve cut."""
    if shape == "free":
        return block
    return dataclasses.replace(block, compressible=block.compressible & ENGINE_MODULES)


def constrained_curves(curves: list[dict[str, ModuleCurve]], block: BlockShape) -> list[dict[str, ModuleCurve]]:
    """Error curves with every module the block may not cut held at its full width (``min_keep`` = full)."""
    return [{name: curve if name in block.compressible
             else dataclasses.replace(curve, min_keep=curve.error.numel() - 1)
             for name, curve in layer.items()} for layer in curves]
