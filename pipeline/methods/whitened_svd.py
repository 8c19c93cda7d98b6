"""Baseline (SVD-LLM style): every linear of a block truncated in the whitened space of its own input.

W ≈ S⁻¹ (S W)_r with S = C^{1/2}, C = E[x xᵀ] over the linear's calibration inputs, at the same rank (so the same
parameter count) as ``weight_svd``; the factors have weight_svd's format and are evaluated the same way. Inputs:
q/k/v read the attention input (``attn_gram``), up/gate the MLP input after its norm (``mlp_in_gram``), down the
MLP activation (``mlp_gram``), o the attention output before o_proj (``o_in_gram``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from pipeline.adapters import LayerAdapter, ModelAdapter
from pipeline.artifacts import ArtifactError
from pipeline.capture import OPTIONAL_STATS
from pipeline.modegpt import F64, output_error, svd_rank_for_sparsity, whitened_truncated_svd, whitening_roots
from pipeline.plan import LayerPlan

from .base import MethodSettings
from .weight_svd import WeightSVD

# Each linear's input correlation in the store.
INPUT_GRAM = {
    "q_proj": "attn_gram", "k_proj": "attn_gram", "v_proj": "attn_gram", "o_proj": "o_in_gram",
    "up_proj": "mlp_in_gram", "gate_proj": "mlp_in_gram", "down_proj": "mlp_gram",
}


@dataclass(frozen=True)
class WhitenedSettings(MethodSettings):
    eig_floor: float = 1e-8  # relative eigenvalue floor of each input correlation's square root

    @classmethod
    def check(cls, compression: Any, check: Callable[[bool, str, Any, str], None]) -> None:
        check(compression.eig_floor > 0, "compression.eig_floor", compression.eig_floor, "a number > 0")


class WhitenedSVD(WeightSVD):
    name = "whitened_svd"
    needs_store = True
    sequential_calibration = True  # weight_svd's apply_in_place
    assemblable = False  # weight_svd's factor format: benchmarks/quality.py evaluates it in memory
    settings_type = WhitenedSettings

    def solve_layer(self, layer: LayerAdapter, adapter: ModelAdapter, sums: dict[str, Tensor] | None,
                    plan: LayerPlan, settings: WhitenedSettings, device: torch.device
                    ) -> tuple[dict[str, Tensor], dict[str, float]]:
        assert sums is not None, "whitened SVD needs the layer's input correlations"
        missing = [n for n in OPTIONAL_STATS if n not in sums]
        if missing:
            raise ArtifactError(f"the correlation store lacks {', '.join(missing)} (captured before whitened_svd "
                                "existed): rerun `modegpt capture overwrite=[capture]`")
        tokens = float(sums["tokens"])
        factors: dict[str, Tensor] = {}
        errors: dict[str, float] = {}
        # q/k/v (and up/gate) share one input: each correlation and its roots are computed once per layer.
        corrs: dict[str, tuple[Tensor, tuple[Tensor, Tensor]]] = {}
        for name, gram in INPUT_GRAM.items():
            module = getattr(layer, name)
            if module is None:
                continue
            if gram not in corrs:
                corr = sums[gram].to(device, F64) / tokens
                corrs[gram] = corr, whitening_roots(corr, settings.eig_floor)
            corr, roots = corrs[gram]
            w = module.weight.detach().to(device, F64).T
            rank = svd_rank_for_sparsity(w.shape[0], w.shape[1], plan.sparsity)
            a, b = whitened_truncated_svd(w, corr, rank, settings.eig_floor, roots=roots)
            factors[f"{name}.a"], factors[f"{name}.b"] = a.cpu().contiguous(), b.cpu().contiguous()
            # output error relative to the output energy, as MoDeGPT's errors are reported
            energy = output_error(w, torch.zeros_like(w), corr)
            errors[name] = float(output_error(w, a @ b, corr) / energy.clamp_min(1e-300))
        return factors, errors
