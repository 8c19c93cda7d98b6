"""Llama-style decoders: RMSNorm, SwiGLU MLP, RoPE, GQA (Llama 2/3, Mistral, Qwen2 with q/k/v biases)."""

from __future__ import annotations

from typing import Any

from torch import nn

from .base import BlockShape, HeadLayout, LayerAdapter, ModelAdapter, UnsupportedModelError

# Sizes every tiny config shrinks to (GQA kept: 4 query heads share 2 KV heads); byte-level vocabulary.
TINY_SIZES: dict[str, Any] = {
    "hidden_size": 64, "intermediate_size": 96, "num_hidden_layers": 3, "num_attention_heads": 4,
    "num_key_value_heads": 2, "head_dim": 16, "max_position_embeddings": 256, "vocab_size": 272,
    "bos_token_id": 256, "eos_token_id": 257, "pad_token_id": 257,
}


class LlamaAdapter(ModelAdapter):
    family = "llama"
    model_types = ("llama", "mistral", "qwen2")
    tiny_configs = {
        # HuggingFaceTB/SmolLM2-135M
        "llama": {**TINY_SIZES, "hidden_act": "silu", "rms_norm_eps": 1e-5, "rope_theta": 100000.0,
                  "tie_word_embeddings": True},
        # mistralai/Mistral-7B-v0.1 (its 4096-token sliding window is longer than any tiny sequence)
        "mistral": {**TINY_SIZES, "hidden_act": "silu", "rms_norm_eps": 1e-5, "rope_theta": 10000.0,
                    "sliding_window": 4096, "tie_word_embeddings": False},
        # Qwen/Qwen2.5-7B: q/k/v biases, no o bias, untied head
        "qwen2": {**TINY_SIZES, "hidden_act": "silu", "rms_norm_eps": 1e-6, "rope_theta": 1000000.0,
                  "tie_word_embeddings": False, "use_sliding_window": False},
    }

    @classmethod
    def compressed_classes(cls) -> tuple[type, type]:
        from pipeline.modeling.modeling_modegpt import ModeGPTLlamaConfig, ModeGPTLlamaForCausalLM

        return ModeGPTLlamaConfig, ModeGPTLlamaForCausalLM

    def decoder_layers(self) -> nn.ModuleList:
        return self.model.model.layers

    def layer(self, index: int) -> LayerAdapter:
        block = self.decoder_layers()[index]
        attn, mlp = block.self_attn, block.mlp
        return LayerAdapter(
            block=block, index=index,
            q_proj=attn.q_proj, k_proj=attn.k_proj, v_proj=attn.v_proj, o_proj=attn.o_proj,
            up_proj=mlp.up_proj, gate_proj=mlp.gate_proj, down_proj=mlp.down_proj,
            q_norm=getattr(attn, "q_norm", None), k_norm=getattr(attn, "k_norm", None),
        )

    def head_layout(self) -> HeadLayout:
        c = self.config
        head_dim = getattr(c, "head_dim", None) or c.hidden_size // c.num_attention_heads
        kv = getattr(c, "num_key_value_heads", None) or c.num_attention_heads
        return HeadLayout(num_heads=c.num_attention_heads, num_kv_heads=kv, head_dim=head_dim, rope=True)

    def block_shape(self) -> BlockShape:
        c = self.config
        return BlockShape(c.hidden_size, c.intermediate_size, self.head_layout(), gated_mlp=True,
                          compressible=self.compressible)

    def bias_flags(self) -> dict[str, bool]:
        first = self.layer(0)
        return {
            "mlp_in": first.up_proj.bias is not None,
            "mlp_out": first.down_proj.bias is not None,
            "qk": first.q_proj.bias is not None,
            "v": first.v_proj.bias is not None,
            "o": first.o_proj.bias is not None,
        }

    def check_supported(self) -> None:
        _check_full_rotary(self.config)


def _check_full_rotary(config: Any) -> None:
    """The compressed attention rotates every kept q/k column: partial rotary embeddings are not handled."""
    params = getattr(config, "rope_parameters", None) or {}
    factor = params.get("partial_rotary_factor", getattr(config, "partial_rotary_factor", 1.0)) or 1.0
    if float(factor) != 1.0:
        raise UnsupportedModelError(
            f"partial_rotary_factor={factor} of model_type {config.model_type!r} is not supported: expected 1.0")
