"""Phi-3: a Llama-style decoder whose q/k/v and gate/up projections are fused (``qkv_proj``, ``gate_up_proj``).

The dense model is read through :class:`LinearSlice` views of the fused weights, so capture, solve and assembly
see the same seven linears as for Llama. The compressed model keeps them unfused: after compression q/k and v
have different widths per layer, so a fused qkv_proj would need per-layer split sizes in its config and gains
nothing on speed at these widths (three skinny matmuls vs one), while separate linears reuse the Llama path.
"""

from __future__ import annotations

from .base import LayerAdapter, LinearSlice
from .llama import TINY_SIZES, LlamaAdapter


class Phi3Adapter(LlamaAdapter):
    family = "phi3"
    model_types = ("phi3",)
    tiny_configs = {
        # microsoft/Phi-3-mini-4k-instruct (multi-head attention; its 2047-token sliding window is longer than
        # any tiny sequence)
        "phi3": {**TINY_SIZES, "num_key_value_heads": 4, "hidden_act": "silu", "rms_norm_eps": 1e-5,
                 "rope_theta": 10000.0, "sliding_window": 2047, "tie_word_embeddings": False,
                 "original_max_position_embeddings": 256},
    }

    @classmethod
    def compressed_classes(cls) -> tuple[type, type]:
        from pipeline.modeling.modeling_modegpt import ModeGPTPhi3Config, ModeGPTPhi3ForCausalLM

        return ModeGPTPhi3Config, ModeGPTPhi3ForCausalLM

    def layer(self, index: int) -> LayerAdapter:
        block = self.decoder_layers()[index]
        attn, mlp = block.self_attn, block.mlp
        if not hasattr(attn, "qkv_proj"):  # a compressed Phi-3 model: unfused, laid out like Llama
            return super().layer(index)
        heads = self.head_layout()
        q_rows, kv_rows = heads.num_heads * heads.head_dim, heads.num_kv_heads * heads.head_dim
        width = mlp.down_proj.in_features
        qkv, gate_up = attn.qkv_proj, mlp.gate_up_proj
        return LayerAdapter(
            block=block, index=index,
            q_proj=LinearSlice(qkv, 0, q_rows),
            k_proj=LinearSlice(qkv, q_rows, q_rows + kv_rows),
            v_proj=LinearSlice(qkv, q_rows + kv_rows, q_rows + 2 * kv_rows),
            o_proj=attn.o_proj,
            # Phi3MLP: gate, up = gate_up_proj(x).chunk(2): the gate rows come first
            gate_proj=LinearSlice(gate_up, 0, width), up_proj=LinearSlice(gate_up, width, 2 * width),
            down_proj=mlp.down_proj,
        )
