"""OPT: LayerNorm, ReLU MLP with biases (fc1 -> fc2), learned positions, multi-head attention with biases."""

from __future__ import annotations

from torch import nn

from .base import BlockShape, HeadLayout, LayerAdapter, ModelAdapter


class OptAdapter(ModelAdapter):
    family = "opt"
    model_types = ("opt",)
    tiny_configs = {
        # facebook/opt-125m with the sizes shrunk
        "opt": {
            "activation_function": "relu", "do_layer_norm_before": True, "enable_bias": True, "hidden_size": 64,
            "ffn_dim": 96, "num_hidden_layers": 3, "num_attention_heads": 4, "word_embed_proj_dim": 64,
            "max_position_embeddings": 256, "vocab_size": 272, "bos_token_id": 256, "eos_token_id": 257,
            "pad_token_id": 257, "layer_norm_elementwise_affine": True,
        },
    }

    @classmethod
    def compressed_classes(cls) -> tuple[type, type]:
        from pipeline.modeling.modeling_modegpt import ModeGPTOPTConfig, ModeGPTOPTForCausalLM

        return ModeGPTOPTConfig, ModeGPTOPTForCausalLM

    def decoder_layers(self) -> nn.ModuleList:
        return self.model.model.decoder.layers

    def layer(self, index: int) -> LayerAdapter:
        block = self.decoder_layers()[index]
        attn = block.self_attn
        return LayerAdapter(
            block=block, index=index,
            q_proj=attn.q_proj, k_proj=attn.k_proj, v_proj=attn.v_proj, o_proj=attn.out_proj,
            up_proj=block.fc1, gate_proj=None, down_proj=block.fc2,
        )

    def head_layout(self) -> HeadLayout:
        c = self.config
        return HeadLayout(
            num_heads=c.num_attention_heads, num_kv_heads=c.num_attention_heads,
            head_dim=c.hidden_size // c.num_attention_heads, rope=False,
        )

    def block_shape(self) -> BlockShape:
        c = self.config
        return BlockShape(c.hidden_size, c.ffn_dim, self.head_layout(), gated_mlp=False,
                          compressible=self.compressible)

    def bias_flags(self) -> dict[str, bool]:
        bias = bool(getattr(self.config, "enable_bias", True))
        return {"mlp_in": bias, "mlp_out": bias, "qk": bias, "v": bias, "o": bias}
