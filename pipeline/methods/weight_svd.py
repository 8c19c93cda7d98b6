"""Baseline: every linear of a block replaced by its truncated SVD at equal parameter count (weights only)."""

from __future__ import annotations

import torch
from torch import Tensor

from pipeline.adapters import LayerAdapter, ModelAdapter
from pipeline.modegpt import F64, svd_rank_for_sparsity, truncated_svd
from pipeline.plan import LayerPlan
from pipeline.solver import SolverSettings

from .base import Method

LINEARS = ("q_proj", "k_proj", "v_proj", "o_proj", "up_proj", "gate_proj", "down_proj")


class WeightSVD(Method):
    name = "weight_svd"
    needs_store = False
    assemblable = False  # a solve-only baseline: benchmarks/quality.py evaluates it in memory

    def solve_layer(self, layer: LayerAdapter, adapter: ModelAdapter, sums: dict[str, Tensor] | None,
                    plan: LayerPlan, settings: SolverSettings, device: torch.device
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

    def removed_params(self, adapter: ModelAdapter, plans: list[LayerPlan], stored_numel: list[int]) -> int:
        return adapter.block_linear_params() - sum(stored_numel)
