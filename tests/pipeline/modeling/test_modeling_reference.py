"""Compressed modules against a naive per-head reference built from the dense weights and the solution.

The reference rotates the *full* dense query/key heads, then keeps the selected columns (whole rotary
pairs): the compressed attention, which applies RoPE only on the kept frequencies, must give the same scores.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from modeling_fixtures import MODEL_TYPES, make_dense, random_solutions

from pipeline.adapters import adapter_for
from pipeline.assembly import build_compressed_model, identity_solutions


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


def _head(linear: torch.nn.Linear, x: torch.Tensor, head: int, head_dim: int) -> torch.Tensor:
    rows = slice(head * head_dim, (head + 1) * head_dim)
    out = x @ linear.weight[rows].T
    return out if linear.bias is None else out + linear.bias[rows]


def reference_attention(dense_layer, sol, layout, x: torch.Tensor, cos_sin) -> torch.Tensor:
    n_h, head_dim, group = layout.num_heads, layout.head_dim, layout.group_size
    t = x.shape[1]
    causal = torch.ones(t, t, dtype=torch.bool).tril()
    v_weight, o_weight = sol.v_weight.to(x.dtype), sol.o_weight.to(x.dtype)
    out = torch.zeros_like(x)
    for h in range(n_h):
        j = h // group
        q, k = _head(dense_layer.q_proj, x, h, head_dim), _head(dense_layer.k_proj, x, j, head_dim)
        if dense_layer.q_norm is not None:  # Qwen3: per-head RMSNorm over the full head, before RoPE
            q, k = dense_layer.q_norm(q), dense_layer.k_norm(k)
        if cos_sin is not None:
            cos, sin = cos_sin
            q, k = q * cos + _rotate_half(q) * sin, k * cos + _rotate_half(k) * sin
        idx = sol.qk_index[j]
        scores = q[..., idx] @ k[..., idx].transpose(-1, -2) / math.sqrt(head_dim)
        attn = scores.masked_fill(~causal, float("-inf")).softmax(dim=-1)
        out = out + attn @ (x @ v_weight[j]) @ o_weight[h]
    bias = sol.o_bias if sol.o_bias is not None else dense_layer.o_proj.bias
    return out if bias is None else out + bias.to(x.dtype)


def reference_mlp(dense_layer, sol, x: torch.Tensor, act) -> torch.Tensor:
    idx = sol.mlp_index
    up = x @ dense_layer.up_proj.weight[idx].T
    if dense_layer.up_proj.bias is not None:
        up = up + dense_layer.up_proj.bias[idx]
    hidden = act(x @ dense_layer.gate_proj.weight[idx].T) * up if dense_layer.gate_proj is not None else act(up)
    out = hidden @ sol.mlp_down.to(x.dtype)
    return out if dense_layer.down_proj.bias is None else out + dense_layer.down_proj.bias


@pytest.mark.parametrize("family", MODEL_TYPES)
def test_compressed_layers_match_the_reference(family: str) -> None:
    dense = make_dense(family)
    adapter = adapter_for(dense)
    plans, solutions = random_solutions(adapter)
    model = build_compressed_model(dense, adapter, plans, solutions)
    layout = adapter.head_layout()
    x = torch.randn(2, 9, adapter.block_shape().hidden_size, generator=torch.Generator().manual_seed(3))
    positions = torch.arange(9).unsqueeze(0) + 5  # an offset, so no rotation is the identity
    cos_sin = model.model.rotary_emb(x, positions) if layout.rope else None
    new_layers = type(adapter)(model).layers()
    with torch.no_grad():
        for i, (dense_layer, new_layer, sol) in enumerate(zip(adapter.layers(), new_layers, solutions, strict=True)):
            act = F.relu if dense_layer.gate_proj is None else F.silu  # OPT's ReLU; SwiGLU elsewhere
            attn = new_layer.block.self_attn
            got, _ = attn(hidden_states=x, position_embeddings=cos_sin, attention_mask=None)
            want = reference_attention(dense_layer, sol, layout, x, cos_sin)
            torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-4, msg=f"attention of layer {i}")
            got_mlp = new_layer.down_proj(act(new_layer.up_proj(x)) if new_layer.gate_proj is None else
                                          act(new_layer.gate_proj(x)) * new_layer.up_proj(x))
            want_mlp = reference_mlp(dense_layer, sol, x, act)
            torch.testing.assert_close(got_mlp, want_mlp, atol=1e-5, rtol=1e-4, msg=f"MLP of layer {i}")
            if new_layer.gate_proj is not None:
                torch.testing.assert_close(new_layer.block.mlp(x), want_mlp, atol=1e-5, rtol=1e-4)


def test_full_width_selection_with_permuted_frequencies_is_exact() -> None:
    """Keeping every frequency in a shuffled order must reproduce the dense attention (layout + gather agree)."""
    dense = make_dense("llama")
    adapter = adapter_for(dense)
    plans, solutions = identity_solutions(adapter)
    half = adapter.head_layout().head_dim // 2
    g = torch.Generator().manual_seed(5)
    for sol in solutions:
        perm = torch.stack([torch.randperm(half, generator=g) for _ in range(sol.qk_index.shape[0])])
        sol.qk_index = torch.cat([perm, perm + half], dim=1)
    model = build_compressed_model(dense, adapter, plans, solutions)
    ids = torch.randint(0, 128, (2, 10), generator=g)
    with torch.no_grad():
        torch.testing.assert_close(model(ids).logits, dense(ids).logits, atol=1e-5, rtol=1e-5)
