"""Tiny random dense models of every model type the adapters claim, and hand-built compressed solutions for them.

A plain module, not a conftest.py: tests import these helpers by name (``from modeling_fixtures import ...``),
and a second conftest.py would shadow the one in tests/ that other test files import as ``conftest``.
"""

from __future__ import annotations

import torch

from pipeline.adapters import ModelAdapter, adapter_class, family_of, tiny_model_types
from pipeline.plan import LayerPlan, LayerSolution
from pipeline.tiny import tiny_config

# Every model type some adapter claims (from the registry): llama, mistral, qwen2, opt, phi3, qwen3, ...
MODEL_TYPES = tiny_model_types()
# Uneven widths across layers: (mlp_width, qk_dim, v_dim); q/k stay full where the family does not cut them.
COMPRESSED_DIMS = [(40, 8, 12), (72, 12, 4)]


def compressed_class(model_type: str) -> type:
    return adapter_class(family_of(model_type)).compressed_classes()[1]


def _randomize_vectors(model: torch.nn.Module) -> None:
    """HF initialises biases to 0 and norms to 1; random ones make bias and norm handling observable."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() == 1:
                p.copy_(torch.randn_like(p) * 0.1 + (1.0 if "norm" in name else 0.0))


def make_dense(model_type: str, attn_implementation: str = "sdpa", seed: int = 0) -> torch.nn.Module:
    """The model type's tiny config (two layers), HF's own initialisation, random biases and norms."""
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    config = tiny_config(model_type, num_hidden_layers=len(COMPRESSED_DIMS))
    model = AutoModelForCausalLM.from_config(config, attn_implementation=attn_implementation)
    _randomize_vectors(model)
    return model.eval()


def layer_dims(adapter: ModelAdapter, dims: list[tuple[int, int, int]] = COMPRESSED_DIMS) -> list[tuple[int, int, int]]:
    """``dims`` with q/k at full width for families whose q/k MoDeGPT does not cut."""
    head_dim = adapter.head_layout().head_dim
    cut_qk = "qk" in adapter.block_shape().compressible
    return [(w, q if cut_qk else head_dim, v) for w, q, v in dims]


def random_solutions(
    adapter: ModelAdapter, dims: list[tuple[int, int, int]] = COMPRESSED_DIMS, seed: int = 1
) -> tuple[list[LayerPlan], list[LayerSolution]]:
    """Random kept subsets and random factors of the given widths (RoPE models keep whole frequency pairs)."""
    g = torch.Generator().manual_seed(seed)
    layout, shape = adapter.head_layout(), adapter.block_shape()
    n_h, n_kv, head_dim, d = layout.num_heads, layout.num_kv_heads, layout.head_dim, shape.hidden_size
    has_v_bias = adapter.bias_flags()["v"]
    plans, solutions = [], []
    for mlp_width, qk_dim, v_dim in layer_dims(adapter, dims):
        if layout.rope:
            freqs = [torch.randperm(head_dim // 2, generator=g)[: qk_dim // 2].sort().values for _ in range(n_kv)]
            qk_index = torch.stack([torch.cat([s, s + head_dim // 2]) for s in freqs])
        else:
            qk_index = torch.stack([torch.randperm(head_dim, generator=g)[:qk_dim].sort().values for _ in range(n_kv)])
        sol = LayerSolution(
            mlp_index=torch.randperm(shape.intermediate_size, generator=g)[:mlp_width].sort().values,
            mlp_down=torch.randn(mlp_width, d, generator=g, dtype=torch.float64) * 0.1,
            qk_index=qk_index,
            v_weight=torch.randn(n_kv, d, v_dim, generator=g, dtype=torch.float64) * 0.2,
            o_weight=torch.randn(n_h, v_dim, d, generator=g, dtype=torch.float64) * 0.2,
            o_bias=torch.randn(d, generator=g, dtype=torch.float64) * 0.1 if has_v_bias else None,
        )
        solutions.append(sol)
        plans.append(sol.plan(0.5))
    return plans, solutions
