"""Baseline (ShortGPT): whole decoder blocks removed, those with the lowest Block Influence first.

Block Influence (1 − mean cos(block input, block output)) is in the correlation store already; blocks are dropped
in ascending BI order until the removed share of the blocks' linear parameters reaches the target rate (all
blocks have the same size, so that is ceil(rate × layers) blocks). The result is the dense architecture with
fewer layers: no factors to assemble into the compressed model classes, so it is evaluated in memory
(``in_memory_model``), like weight_svd.
"""

from __future__ import annotations

import copy
import math
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file
from torch import Tensor, nn

from pipeline.adapters import LayerAdapter, ModelAdapter, adapter_for
from pipeline.artifacts import layer_file
from pipeline.plan import LayerPlan

from .base import Method, MethodSettings, SolveInputs


def blocks_to_remove(block_influence: Tensor, target_rate: float) -> list[int]:
    """The ceil(rate × layers) blocks of lowest Block Influence (ties: the later block first, as deeper blocks
    are the more redundant ones in ShortGPT's measurements), ascending."""
    n = block_influence.numel()
    count = min(math.ceil(round(target_rate * n, 9)), n - 1)  # keep at least one block
    order = sorted(range(n), key=lambda i: (float(block_influence[i]), -i))
    return sorted(order[:count])


class LayerRemoval(Method):
    name = "layer_removal"
    needs_store = False  # only the Block Influence, which the plan reads
    assemblable = False

    def plan(self, inputs: SolveInputs, target_rate: float, compression: Any) -> list[LayerPlan]:
        block_influence = inputs.block_influence
        removed = set(blocks_to_remove(block_influence, target_rate))
        shape = inputs.adapter.block_shape()
        full = LayerPlan(0.0, shape.intermediate_size, shape.heads.head_dim, shape.heads.head_dim)
        gone = LayerPlan(1.0, 0, 0, 0)
        return [gone if i in removed else full for i in range(block_influence.numel())]

    def solve_layer(self, layer: LayerAdapter, adapter: ModelAdapter, sums: dict[str, Tensor] | None,
                    plan: LayerPlan, settings: MethodSettings, device: torch.device
                    ) -> tuple[dict[str, Tensor], dict[str, float]]:
        return {"removed": torch.tensor([plan.sparsity == 1.0])}, {}

    def removed_params(self, adapter: ModelAdapter, plans: list[LayerPlan], stored_numel: list[int]) -> int:
        # the whole block goes: its norms too, not only the linears
        layers = adapter.decoder_layers()
        return sum(sum(p.numel() for p in layers[i].parameters()) for i, p in enumerate(plans) if p.sparsity == 1.0)

    def in_memory_model(self, dense: nn.Module, family: str, solve_dir: Path) -> nn.Module:
        model = copy.deepcopy(dense)
        layers = adapter_for(model, family).decoder_layers()
        keep = [i for i in range(len(layers)) if not bool(load_file(str(layer_file(solve_dir, i)))["removed"])]
        return without_blocks(model, layers, keep)


def without_blocks(model: nn.Module, layers: nn.ModuleList, keep: list[int]) -> nn.Module:
    """``model`` with only the blocks ``keep`` (in order), renumbered so a KV cache indexes them densely."""
    kept = [layers[i] for i in keep]
    del layers[:]
    layers.extend(kept)
    for new_index, block in enumerate(kept):
        for module in block.modules():
            if hasattr(module, "layer_idx"):
                module.layer_idx = new_index
    config = model.config
    if getattr(config, "layer_types", None) is not None:
        config.layer_types = [config.layer_types[i] for i in keep]
    config.num_hidden_layers = len(kept)
    return model
