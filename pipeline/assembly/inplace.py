"""A solved layer written into its dense block in place, at the dense shapes (for sequential calibration).

The block then computes exactly what the compressed block would: dropped MLP units get a zero column in the
down projection, dropped q/k columns (RoPE pairs) zero rows in q and k (a zero pair adds nothing to a score;
the compressed attention keeps the dense head's scaling), and the value-output factors fill the first ``v_dim``
columns of each head with zeros after them. No new module class is needed, so any family whose adapter finds
its linears works, fused projections (Phi-3) included: their slices are views of the fused weight.
"""

from __future__ import annotations

import torch
from torch import nn

from pipeline.adapters import HeadLayout, LayerAdapter
from pipeline.adapters.base import Linear, output_source
from pipeline.plan import LayerSolution

from .build import head_rows


def _zero_rows_except(linear: Linear, keep: torch.Tensor) -> None:
    mask = torch.ones(linear.weight.shape[0], dtype=torch.bool, device=linear.weight.device)
    mask[keep.to(linear.weight.device)] = False
    linear.weight[mask] = 0.0
    if linear.bias is not None:
        linear.bias[mask] = 0.0


def _set_output_bias(linear: Linear, bias: torch.Tensor) -> None:
    if linear.bias is not None:
        linear.bias.copy_(bias)
    else:
        # A bias-free o (Qwen2) gets the folded value bias as a constant added to its output, not as a new
        # parameter: the block keeps its parameter set, so counts read off the model stay the dense ones.
        module, cols = output_source(linear)

        def add_bias(m: nn.Module, args: object, out: torch.Tensor) -> torch.Tensor:
            out = out.clone()
            out[..., cols] += bias.to(out.device, out.dtype)
            return out

        module.register_forward_hook(add_bias)


@torch.no_grad()
def apply_solution_in_place(layer: LayerAdapter, solution: LayerSolution, heads: HeadLayout) -> None:
    """Overwrite ``layer``'s dense weights so that the block computes the compressed block ``solution`` describes."""
    dtype = layer.down_proj.weight.dtype
    # Type-I: only the kept units reach the output, through the refitted rows of W_D.
    index = solution.mlp_index.long().to(layer.down_proj.weight.device)
    down = layer.down_proj.weight  # [d, D]
    down.zero_()
    down[:, index] = solution.mlp_down.T.to(down.device, dtype)
    # Type-II: the kept columns of every head's q and of its group's k.
    _zero_rows_except(layer.q_proj, head_rows(solution.qk_index, heads.num_heads, heads.head_dim))
    _zero_rows_except(layer.k_proj, head_rows(solution.qk_index, heads.num_kv_heads, heads.head_dim))
    # Type-III: each head's first v_dim value columns carry the new basis; the value bias is folded into o.
    n_kv, d, v_dim = solution.v_weight.shape
    v = layer.v_proj.weight.view(n_kv, heads.head_dim, d)
    v.zero_()
    v[:, :v_dim] = solution.v_weight.transpose(1, 2).to(v.device, dtype)
    if layer.v_proj.bias is not None:
        layer.v_proj.bias.zero_()
    o = layer.o_proj.weight.view(d, heads.num_heads, heads.head_dim)
    o.zero_()
    o[:, :, :v_dim] = solution.o_weight.permute(2, 0, 1).to(o.device, dtype)
    if solution.o_bias is not None:
        _set_output_bias(layer.o_proj, solution.o_bias.to(o.device, dtype))
