"""DeciLM / Nemotron-NAS configuration: a Llama decoder whose layers each have their own MLP width (and KV groups).

Copied beside an exported model and named in its ``auto_map``: transformers ships no class for ``nemotron-nas``,
and vLLM, SGLang and TensorRT-LLM read ``block_configs`` through this file (config code only, no modeling code).
Self-contained on purpose: only ``transformers`` is imported, and it loads with transformers 4.x and 5.x.
Each entry of ``block_configs`` reads as attributes (``block.ffn.ffn_mult``), as those engines expect, and is
written back as plain JSON.
"""

from __future__ import annotations

from typing import Any

from transformers import PretrainedConfig


class _Section:
    """One part of a block config (``attention`` or ``ffn``): its keys as attributes."""

    def __init__(self, **fields: Any) -> None:
        self.no_op = False
        self.replace_with_linear = False
        self.__dict__.update(fields)

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


class BlockConfig:
    """One decoder layer: ``attention`` (``no_op``, ``n_heads_in_group``) and ``ffn`` (``no_op``, ``ffn_mult``)."""

    def __init__(self, attention: dict[str, Any] | _Section, ffn: dict[str, Any] | _Section, **_: Any) -> None:
        self.attention = attention if isinstance(attention, _Section) else _Section(**attention)
        self.ffn = ffn if isinstance(ffn, _Section) else _Section(**ffn)

    def to_dict(self) -> dict[str, Any]:
        return {"attention": self.attention.to_dict(), "ffn": self.ffn.to_dict()}


class DeciLMConfig(PretrainedConfig):
    model_type = "nemotron-nas"

    def __init__(self, vocab_size: int = 32000, hidden_size: int = 4096, num_hidden_layers: int = 32,
                 num_attention_heads: int = 32, head_dim: int | None = None, hidden_act: str = "silu",
                 max_position_embeddings: int = 2048, initializer_range: float = 0.02, rms_norm_eps: float = 1e-6,
                 use_cache: bool = True, rope_theta: float | None = None, rope_scaling: dict[str, Any] | None = None,
                 attention_bias: bool = False, attention_dropout: float = 0.0, mlp_bias: bool = False,
                 tie_word_embeddings: bool = False, block_configs: list[Any] | None = None, **kwargs: Any) -> None:
        self.vocab_size = vocab_size
        self.hidden_size = hidden_size
        self.num_hidden_layers = num_hidden_layers
        self.num_attention_heads = num_attention_heads
        self.head_dim = head_dim or hidden_size // num_attention_heads
        self.hidden_act = hidden_act
        self.max_position_embeddings = max_position_embeddings
        self.initializer_range = initializer_range
        self.rms_norm_eps = rms_norm_eps
        self.use_cache = use_cache
        # transformers 5 writes RoPE as ``rope_parameters`` only (it arrives in kwargs); engines that read
        # ``rope_theta`` (SGLang, TensorRT-LLM) would otherwise get the 10000 default instead of the model's base
        rope_parameters = kwargs.get("rope_parameters") or {}
        self.rope_theta = rope_theta if rope_theta is not None else rope_parameters.get("rope_theta", 10000.0)
        self.rope_scaling = rope_scaling
        self.attention_bias = attention_bias
        self.attention_dropout = attention_dropout
        self.mlp_bias = mlp_bias
        # per layer: engines read widths and KV groups from block_configs, never from these model-wide keys
        self.intermediate_size = None
        self.num_key_value_heads = None
        blocks = block_configs or []
        self.block_configs = [b if isinstance(b, BlockConfig) else BlockConfig(**b) for b in blocks]
        super().__init__(tie_word_embeddings=tie_word_embeddings, **kwargs)

    def to_dict(self) -> dict[str, Any]:
        out = super().to_dict()
        out["block_configs"] = [b.to_dict() for b in self.block_configs]
        return out
