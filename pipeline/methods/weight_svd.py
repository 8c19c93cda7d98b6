"""Baseline: every linear of a block replaced by its truncated SVD at equal parameter count (weights only)."""

from __future__ import annotations

import copy
from pathlib import Path

import torch
from safetensors.torch import load_file
from torch import Tensor, nn

from pipeline.adapters import LayerAdapter, ModelAdapter, adapter_for
from pipeline.artifacts import layer_file
from pipeline.modegpt import F64, svd_rank_for_sparsity, truncated_svd
from pipeline.plan import LayerPlan

from .base import Method, MethodSettings

LINEARS = ("q_proj", "k_proj", "v_proj", "o_proj", "up_proj", "gate_proj", "down_proj")


class WeightSVD(Method):
    name = "weight_svd"
    needs_store = False
    assemblable = False  # a solve-only baseline: benchmarks/quality.py evaluates it in memory

    def solve_layer(self, layer: LayerAdapter, adapter: ModelAdapter, sums: dict[str, Tensor] | None,
                    plan: LayerPlan, settings: MethodSettings, device: torch.device
                    ) -> tuple[dict[str, Tensor], dict[str, float]]:
        factors: dict[str, Tensor] = {}
        for name in LINEARS:
            module = getattr(layer, name)
            if module is None:
                continue
            w = module.weight.detach().to(device, F64).T
            rank = svd_rank_for_sparsity(w.shape[0], w.shape[1], plan.sparsity)
            a, b = truncated_svd(w, rank)
            factors[f"{name}.a"], factors[f"{name}.b"] = a.cpu().contiguous(), b.cpu().contiguous()
        return factors, {}

    def apply_in_place(self, layer: LayerAdapter, adapter: ModelAdapter, tensors: dict[str, Tensor]) -> None:
        apply_low_rank(layer, tensors)

    def in_memory_model(self, dense: nn.Module, family: str, solve_dir: Path) -> nn.Module:
        return low_rank_model(dense, family, solve_dir)

    def removed_params(self, adapter: ModelAdapter, plans: list[LayerPlan], stored_numel: list[int]) -> int:
        return adapter.block_linear_params() - sum(stored_numel)


def low_rank_model(dense: nn.Module, family: str, solve_dir: Path) -> nn.Module:
    """A copy of ``dense`` with every block weight replaced by its solved low-rank product A·B (the same function
    as the factored layer; the weights stay dense-shaped, so count parameters from the solve's manifest)."""
    model = copy.deepcopy(dense)
    for i, layer in enumerate(adapter_for(model, family).layers()):
        apply_low_rank(layer, load_file(str(layer_file(solve_dir, i))))
    return model


@torch.no_grad()
def apply_low_rank(layer: LayerAdapter, factors: dict[str, Tensor]) -> None:
    """Every linear of ``layer`` replaced, in place and at its dense shape, by its solved product A·B."""
    for name in LINEARS:
        module = getattr(layer, name)
        if module is not None:
            w = (factors[f"{name}.a"] @ factors[f"{name}.b"]).T
            module.weight.copy_(w.to(module.weight.device, module.weight.dtype))
