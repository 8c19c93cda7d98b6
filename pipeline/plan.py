"""The per-layer size plan and per-layer solutions: plain data passed between solve and assemble.

Tensors use the "X W" layout (a layer computes ``X @ W``; HF's ``nn.Linear.weight`` is ``W.T``), so the
math never needs to know about HF modules; adapters and the model builder do the transposing.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch

from pipeline.modegpt.budget import ModuleCurve


@dataclass(frozen=True)
class LayerPlan:
    sparsity: float  # phi_l: fraction of this layer's linear parameters removed
    mlp_width: int  # kept MLP inner dimension
    qk_dim: int  # kept query/key columns per head (even with RoPE: whole rotary pairs)
    v_dim: int  # kept value/output rank per head

    def to_json(self) -> dict[str, float | int]:
        return asdict(self)


@dataclass
class LayerSolution:
    """One layer's compressed factors, as the solve stage writes them."""

    mlp_index: torch.Tensor  # long [mlp_width]: kept columns of up/gate (and their biases)
    mlp_down: torch.Tensor  # [mlp_width, d]: the re-fitted down projection
    qk_index: torch.Tensor  # long [n_kv, qk_dim]: kept q/k columns inside each head of a KV group
    v_weight: torch.Tensor  # [n_kv, d, v_dim]
    o_weight: torch.Tensor  # [n_h, v_dim, d]
    o_bias: torch.Tensor | None = None  # [d]: output bias with the value bias folded in (models with b_V)

    def to_tensors(self) -> dict[str, torch.Tensor]:
        out = {
            "mlp_index": self.mlp_index, "mlp_down": self.mlp_down, "qk_index": self.qk_index,
            "v_weight": self.v_weight, "o_weight": self.o_weight,
        }
        if self.o_bias is not None:
            out["o_bias"] = self.o_bias
        return {k: v.contiguous() for k, v in out.items()}

    @classmethod
    def from_tensors(cls, t: dict[str, torch.Tensor]) -> LayerSolution:
        return cls(
            mlp_index=t["mlp_index"], mlp_down=t["mlp_down"], qk_index=t["qk_index"],
            v_weight=t["v_weight"], o_weight=t["o_weight"], o_bias=t.get("o_bias"),
        )

    def plan(self, sparsity: float) -> LayerPlan:
        return LayerPlan(
            sparsity=sparsity, mlp_width=int(self.mlp_index.numel()), qk_dim=int(self.qk_index.shape[1]),
            v_dim=int(self.v_weight.shape[2]),
        )


def curves_to_tensors(curves: list[dict[str, ModuleCurve]]) -> dict[str, torch.Tensor]:
    """Every layer's module error curves as flat tensors (``layer.module.error`` and ``layer.module.meta``)."""
    out = {}
    for index, layer in enumerate(curves):
        for name, c in layer.items():
            out[f"{index}.{name}.error"] = c.error.to(torch.float64).contiguous()
            out[f"{index}.{name}.meta"] = torch.tensor([c.unit_params, c.min_keep], dtype=torch.long)
    return out


def curves_from_tensors(t: dict[str, torch.Tensor], num_layers: int) -> list[dict[str, ModuleCurve]]:
    curves: list[dict[str, ModuleCurve]] = [{} for _ in range(num_layers)]
    for key, error in t.items():
        index, name, kind = key.split(".")
        if kind == "error":
            unit_params, min_keep = (int(v) for v in t[f"{index}.{name}.meta"])
            curves[int(index)][name] = ModuleCurve(error=error, unit_params=unit_params, min_keep=min_keep)
    return curves
