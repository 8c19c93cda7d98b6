"""Tiny random dense models of each supported family, and hand-built compressed solutions for them.

A plain module, not a conftest.py: tests import these helpers by name (``from modeling_fixtures import ...``),
and a second conftest.py would shadow the one in tests/ that other test files import as ``conftest``.
"""

from __future__ import annotations

import torch
from transformers import LlamaConfig, LlamaForCausalLM, OPTConfig, OPTForCausalLM, Qwen2Config, Qwen2ForCausalLM

from pipeline.adapters import ModelAdapter
from pipeline.plan import LayerPlan, LayerSolution

SMALL = {"vocab_size": 128, "hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4,
         "max_position_embeddings": 128}
# Uneven widths across layers: (mlp_width, qk_dim, v_dim).
COMPRESSED_DIMS = [(40, 8, 12), (72, 12, 4)]


def _randomize_vectors(model: torch.nn.Module) -> None:
    """HF initialises biases to 0 and norms to 1; random ones make bias and norm handling observable."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() == 1:
                p.copy_(torch.randn_like(p) * 0.1 + (1.0 if "norm" in name else 0.0))


def make_dense(family: str, attn_implementation: str = "sdpa", seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    if family == "llama":
        config = LlamaConfig(**SMALL, intermediate_size=96, num_key_value_heads=2, head_dim=16,
                             tie_word_embeddings=True)
        model = LlamaForCausalLM._from_config(config, attn_implementation=attn_implementation)
    elif family == "qwen2":  # q/k/v biases, no o bias, untied head
        config = Qwen2Config(**SMALL, intermediate_size=96, num_key_value_heads=2, tie_word_embeddings=False)
        model = Qwen2ForCausalLM._from_config(config, attn_implementation=attn_implementation)
    elif family == "opt":  # facebook/opt-125m's config, shrunk
        config = OPTConfig(**SMALL, ffn_dim=96, word_embed_proj_dim=64, do_layer_norm_before=True, dropout=0.1,
                           activation_function="relu", pad_token_id=1, bos_token_id=2, eos_token_id=2)
        model = OPTForCausalLM._from_config(config, attn_implementation=attn_implementation)
    else:
        raise ValueError(family)
    _randomize_vectors(model)
    return model.eval()


def random_solutions(
    adapter: ModelAdapter, dims: list[tuple[int, int, int]] = COMPRESSED_DIMS, seed: int = 1
) -> tuple[list[LayerPlan], list[LayerSolution]]:
    """Random kept subsets and random factors of the given widths (RoPE models keep whole frequency pairs)."""
    g = torch.Generator().manual_seed(seed)
    layout, shape = adapter.head_layout(), adapter.block_shape()
    n_h, n_kv, head_dim, d = layout.num_heads, layout.num_kv_heads, layout.head_dim, shape.hidden_size
    has_v_bias = adapter.bias_flags()["v"]
    plans, solutions = [], []
    for mlp_width, qk_dim, v_dim in dims:
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
