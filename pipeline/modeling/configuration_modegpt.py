"""Configurations of MoDeGPT-compressed decoders: the dense config plus per-layer inner widths.

Self-contained on purpose (only ``transformers`` imports): ``save_pretrained`` copies this file next to the
weights, so a fresh process loads the model with ``trust_remote_code=True`` without this project installed.
"""

from __future__ import annotations

from dataclasses import dataclass

from transformers import LlamaConfig, OPTConfig, Phi3Config, Qwen3Config

LAYER_DIM_KEYS = ("mlp_width", "qk_dim", "v_dim")


@dataclass(repr=False, eq=False)
class ModeGPTConfigMixin:
    """Fields shared by the compressed configs (a dataclass, so the config dataclasses inherit its fields).

    layer_dims: per decoder layer {"mlp_width", "qk_dim", "v_dim"}; None means the dense widths.
    rope_index: per layer, [n_kv][qk_dim // 2] kept rotary frequency indices (RoPE models only).
    qk_bias / o_bias: whether q/k and o carry biases; None means the family's dense default. The compressed
    v_proj never has a bias: the value bias is folded into the output bias, so o_bias may be True even
    where the dense o_proj had none (Qwen2).
    """

    layer_dims: list[dict[str, int]] | None = None
    rope_index: list[list[list[int]]] | None = None
    qk_bias: bool | None = None
    o_bias: bool | None = None

    # --- per-family knowledge, overridden below ---------------------------------------------------
    uses_rope = False
    uses_qk_norm = False  # per-head RMSNorm on q and k (Qwen3): q/k must keep their full head width

    def __init_subclass__(cls, **kwargs) -> None:
        super().__init_subclass__(**kwargs)
        if "model_type" in cls.__dict__:  # a family's config: saved with the checkpoint, named in its auto_map
            cls.register_for_auto_class()

    def __post_init__(self, **kwargs) -> None:
        super().__post_init__(**kwargs)  # the family's own config (next in the MRO) first
        self._resolve_modegpt_fields()

    def dense_mlp_width(self) -> int:
        raise NotImplementedError

    def dense_bias(self) -> bool:
        raise NotImplementedError

    # --- shared ----------------------------------------------------------------------------------
    def head_counts(self) -> tuple[int, int, int]:
        """(n_heads, n_kv_heads, head_dim) of the dense model."""
        n_h = self.num_attention_heads
        n_kv = getattr(self, "num_key_value_heads", None) or n_h
        head_dim = getattr(self, "head_dim", None) or self.hidden_size // n_h
        return n_h, n_kv, head_dim

    def dims(self, layer_idx: int) -> dict[str, int]:
        if self.layer_dims is None:
            head_dim = self.head_counts()[2]
            return {"mlp_width": self.dense_mlp_width(), "qk_dim": head_dim, "v_dim": head_dim}
        return {k: int(self.layer_dims[layer_idx][k]) for k in LAYER_DIM_KEYS}

    def kept_frequencies(self, layer_idx: int) -> list[list[int]]:
        """[n_kv][qk_dim // 2] kept rotary frequencies of one layer (all of them when uncompressed)."""
        _, n_kv, head_dim = self.head_counts()
        if self.rope_index is None:
            return [list(range(head_dim // 2)) for _ in range(n_kv)]
        return [[int(i) for i in group] for group in self.rope_index[layer_idx]]

    def _resolve_modegpt_fields(self) -> None:
        if self.qk_bias is None:
            self.qk_bias = self.dense_bias()
        if self.o_bias is None:
            self.o_bias = self.dense_bias()
        n_layers, (_, n_kv, head_dim) = self.num_hidden_layers, self.head_counts()
        if self.layer_dims is not None:
            if len(self.layer_dims) != n_layers:
                raise ValueError(f"layer_dims has {len(self.layer_dims)} entries for {n_layers} layers")
            for i, dims in enumerate(self.layer_dims):
                if set(dims) != set(LAYER_DIM_KEYS) or min(int(v) for v in dims.values()) < 1:
                    raise ValueError(f"layer_dims[{i}] must map {LAYER_DIM_KEYS} to positive ints, got {dims}")
        if self.uses_qk_norm and any(self.dims(i)["qk_dim"] != head_dim for i in range(n_layers)):
            raise ValueError(f"{type(self).__name__} normalises q/k per head: every qk_dim must be {head_dim}")
        if not self.uses_rope:
            if self.rope_index is not None:
                raise ValueError(f"{type(self).__name__} has no rotary embedding but rope_index was given")
            return
        if self.rope_index is None:
            if any(self.dims(i)["qk_dim"] != head_dim for i in range(n_layers)):
                raise ValueError("compressed q/k widths need rope_index (which rotary frequencies were kept)")
            return
        if len(self.rope_index) != n_layers:
            raise ValueError(f"rope_index has {len(self.rope_index)} entries for {n_layers} layers")
        for i, groups in enumerate(self.rope_index):
            half = self.dims(i)["qk_dim"] // 2
            ok = len(groups) == n_kv and all(len(g) == half and all(0 <= f < head_dim // 2 for f in g) for g in groups)
            if not ok or self.dims(i)["qk_dim"] % 2:
                raise ValueError(f"rope_index[{i}] must be [{n_kv}][qk_dim/2] frequencies in [0, {head_dim // 2})")


class _LlamaStyle:
    """What the Llama-like families share: RoPE, the MLP width in ``intermediate_size``, q/k/v/o biases in
    ``attention_bias`` (Phi3Config has no such field: its attention has no biases)."""

    uses_rope = True

    def dense_mlp_width(self) -> int:
        return self.intermediate_size

    def dense_bias(self) -> bool:
        return bool(getattr(self, "attention_bias", False))


class ModeGPTLlamaConfig(_LlamaStyle, ModeGPTConfigMixin, LlamaConfig):
    """Llama-style decoders (Llama 2/3, Mistral, Qwen2): RMSNorm, SwiGLU, RoPE, GQA."""

    model_type = "modegpt_llama"


class ModeGPTOPTConfig(ModeGPTConfigMixin, OPTConfig):
    """OPT: LayerNorm, ReLU MLP, learned positions, multi-head attention, biases everywhere (enable_bias)."""

    model_type = "modegpt_opt"

    def dense_mlp_width(self) -> int:
        return self.ffn_dim

    def dense_bias(self) -> bool:
        return bool(self.enable_bias)


class ModeGPTPhi3Config(_LlamaStyle, ModeGPTConfigMixin, Phi3Config):
    """Phi-3: Llama-style, with q/k/v and gate/up fused in the dense model (unfused once compressed)."""

    model_type = "modegpt_phi3"


class ModeGPTQwen3Config(_LlamaStyle, ModeGPTConfigMixin, Qwen3Config):
    """Qwen3: Llama-style with a per-head RMSNorm on q and k before RoPE."""

    model_type = "modegpt_qwen3"
    uses_qk_norm = True
