"""MoDeGPT as a method: Type-I Nyström (MLP), Type-II CR (key-query), Type-III SVD (value-output) per layer.

The orchestration only: its settings (``settings.py``), one layer's solve (``layer.py``), the module error curves
(``curves.py``) and the KL probe behind them (``probe.py``) are this package's siblings; the math they call is
``pipeline.modegpt``.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from pipeline.adapters import LayerAdapter, ModelAdapter
from pipeline.artifacts import ArtifactError
from pipeline.methods.base import Method, SolveInputs
from pipeline.modegpt import ModuleCurve
from pipeline.plan import LayerPlan, LayerSolution

from .curves import cached_error_curves, module_error_curves
from .layer import DenseLayer, solve_modegpt_layer
from .settings import ModegptSettings


class ModeGPT(Method):
    name = "modegpt"
    needs_store = True
    assemblable = True
    error_allocation = True
    sequential_calibration = True
    settings_type = ModegptSettings

    def solve_layer(self, layer: LayerAdapter, adapter: ModelAdapter, sums: dict[str, Tensor] | None,
                    plan: LayerPlan, settings: ModegptSettings, device: torch.device
                    ) -> tuple[dict[str, Tensor], dict[str, float]]:
        assert sums is not None, "MoDeGPT needs the layer's correlation sums"
        stats = {n: t.to(device) for n, t in sums.items()}
        heads = adapter.head_layout()
        solution, errors = solve_modegpt_layer(stats, DenseLayer.from_layer(layer, heads, device), plan, heads,
                                               settings, layer=layer.index)
        # Solved in FP64; stored in FP32, which is more than the checkpoint's own precision needs.
        tensors = {n: t.float() if t.is_floating_point() else t for n, t in solution.to_tensors().items()}
        return tensors, errors

    def error_curves(self, inputs: SolveInputs, compression: Any) -> list[dict[str, ModuleCurve]]:
        adapter = inputs.adapter

        def layer_curves(index: int, sums: dict[str, Tensor], settings: ModegptSettings) -> dict[str, ModuleCurve]:
            return self.module_curves(adapter.layer(index), adapter, sums, settings, compression.max_sparsity,
                                      inputs.device)

        return cached_error_curves(inputs, compression, layer_curves)

    def module_curves(self, layer: LayerAdapter, adapter: ModelAdapter, sums: dict[str, Tensor],
                      settings: ModegptSettings, max_sparsity: float, device: torch.device
                      ) -> dict[str, ModuleCurve]:
        """One layer's error-versus-width curve per module."""
        missing = [n for n in ("inv_resid_in", "inv_resid_out") if n not in sums]
        if missing:
            raise ArtifactError(f"the correlation store lacks {', '.join(missing)} (captured before "
                                "compression.allocation=error existed): rerun with overwrite=[capture]")
        stats = {n: t.to(device) for n, t in sums.items()}
        dense = DenseLayer.from_layer(layer, adapter.head_layout(), device)
        return module_error_curves(stats, dense, adapter.block_shape(), settings, max_sparsity)

    # pipeline.assembly is imported where it is used: composing any config imports every method (the schema comes
    # from their settings), and assembly's import of transformers would add seconds to each compose
    def apply_in_place(self, layer: LayerAdapter, adapter: ModelAdapter, tensors: dict[str, Tensor]) -> None:
        from pipeline.assembly import apply_solution_in_place

        apply_solution_in_place(layer, LayerSolution.from_tensors(tensors), adapter.head_layout())

    def removed_params(self, adapter: ModelAdapter, plans: list[LayerPlan], stored_numel: list[int]) -> int:
        from pipeline.assembly import expected_parameter_count

        return adapter.total_params() - expected_parameter_count(adapter, plans)
