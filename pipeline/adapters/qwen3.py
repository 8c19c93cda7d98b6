"""Qwen3: a Llama-style decoder with a per-head RMSNorm on q and k before RoPE (``q_norm``, ``k_norm``).

Type-II is left out here: the norm divides each head's q (and k) by its RMS over all head_dim columns, so a
q/k head cut to a subset of columns would be normalised by the RMS of that subset instead: every score changes
by a per-token factor that the CR selection does not model (MoDeGPT's Type-II is exact only without such a
norm). The layer's whole budget goes to the MLP (Type-I) and value-output (Type-III) widths instead; the
README's "Adding a family" section records the measurement behind this.
"""

from __future__ import annotations

from .llama import TINY_SIZES, LlamaAdapter


class Qwen3Adapter(LlamaAdapter):
    family = "qwen3"
    model_types = ("qwen3",)
    compressible = frozenset({"mlp", "vo"})
    tiny_configs = {
        # Qwen/Qwen3-0.6B: head_dim 128 with 16 heads over hidden 1024, so n_heads * head_dim != hidden (kept)
        "qwen3": {**TINY_SIZES, "head_dim": 32, "hidden_act": "silu", "rms_norm_eps": 1e-6,
                  "rope_theta": 1000000.0, "tie_word_embeddings": True, "attention_bias": False,
                  "use_sliding_window": False},
    }

    @classmethod
    def compressed_classes(cls) -> tuple[type, type]:
        from pipeline.modeling.modeling_modegpt import ModeGPTQwen3Config, ModeGPTQwen3ForCausalLM

        return ModeGPTQwen3Config, ModeGPTQwen3ForCausalLM
