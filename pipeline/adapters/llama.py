"""Llama-style decoders: RMSNorm, SwiGLU MLP, RoPE, GQA (Llama 2/3, Mistral, Qwen2 with q/k/v biases)."""

from __future__ import annotations

from torch import nn

from .base import BlockShape, HeadLayout, LayerAdapter, ModelAdapter


class LlamaAdapter(ModelAdapter):
    family = "llama"
    model_types = ("llama", "mistral", "qwen2")

    def decoder_layers(self) -> nn.ModuleList:
        return self.model.model.layers

    def layer(self, index: int) -> LayerAdapter:
        block = self.decoder_layers()[index]
        attn, mlp = block.self_attn, block.mlp
        return LayerAdapter(
            block=block, index=index,
            q_proj=attn.q_proj, k_proj=attn.k_proj, v_proj=attn.v_proj, o_proj=attn.o_proj,
            up_proj=mlp.up_proj, gate_proj=mlp.gate_proj, down_proj=mlp.down_proj,
        )

    def head_layout(self) -> HeadLayout:
        c = self.config
        head_dim = getattr(c, "head_dim", None) or c.hidden_size // c.num_attention_heads
        kv = getattr(c, "num_key_value_heads", None) or c.num_attention_heads
        return HeadLayout(num_heads=c.num_attention_heads, num_kv_heads=kv, head_dim=head_dim, rope=True)

    def block_shape(self) -> BlockShape:
        c = self.config
        return BlockShape(c.hidden_size, c.intermediate_size, self.head_layout(), gated_mlp=True)

    def bias_flags(self) -> dict[str, bool]:
        first = self.layer(0)
        return {
            "mlp_in": first.up_proj.bias is not None,
            "mlp_out": first.down_proj.bias is not None,
            "qk": first.q_proj.bias is not None,
            "v": first.v_proj.bias is not None,
            "o": first.o_proj.bias is not None,
        }
