"""Models compressed by MoDeGPT: the HF Llama / OPT / Phi-3 / Qwen3 models with narrower attention and MLP.

Each class builds its HF base model, then swaps every decoder layer's attention and MLP linears for
compressed ones whose widths come from ``config.layer_dims``; everything else (embeddings, norms, head,
positions, decoder-layer forward, caching, generation) is the base model's. Self-contained on purpose
(only ``torch`` / ``transformers`` imports and the sibling configuration file): ``save_pretrained`` copies
this file and its relative imports, so ``trust_remote_code=True`` loads without this project installed.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
import transformers
from torch import nn
from transformers import LlamaForCausalLM, OPTForCausalLM, Phi3ForCausalLM, Qwen3ForCausalLM
from transformers.activations import ACT2FN
from transformers.cache_utils import Cache
from transformers.models.qwen3.modeling_qwen3 import Qwen3RMSNorm

from .configuration_modegpt import (
    ModeGPTConfigMixin,
    ModeGPTLlamaConfig,
    ModeGPTOPTConfig,
    ModeGPTPhi3Config,
    ModeGPTQwen3Config,
)

# The transformers releases this code was tested with (pyproject's lower bound and the committed lock): the
# classes reuse HF's decoder layers, whose calling convention for the KV cache changes between releases.
TESTED_TRANSFORMERS = ("5.20.0", "5.24.0")


class CacheNotFilledError(RuntimeError):
    """The decoder layers did not hand the KV cache to the compressed attention (a transformers API change)."""


def find_cache(kwargs: dict[str, Any]) -> Cache | None:
    """The KV cache among the keyword arguments a decoder layer passes to its attention, found by type.

    transformers has renamed this argument across releases (``past_key_value`` in 4.x, ``past_key_values`` up to
    5.23, ``cache`` from 5.24); matching the public :class:`~transformers.cache_utils.Cache` type instead of a
    name keeps working across such renames, and anything ambiguous raises instead of decoding without a cache.
    """
    found = {name: value for name, value in kwargs.items() if isinstance(value, Cache)}
    if len(found) > 1:
        raise CacheNotFilledError(f"the attention received several KV caches ({', '.join(found)})")
    return next(iter(found.values()), None)


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


def rope_gather_index(config: ModeGPTConfigMixin, layer_idx: int) -> torch.Tensor:
    """Long [n_kv, qk_dim]: entries of the full-head cos/sin that each KV group's compressed head uses.

    A compressed head is laid out as [x_S, x_{S + d_H/2}] (S = kept frequencies), so ``rotate_half`` on the
    qk_dim-wide vector pairs the same columns as on the full head once cos/sin are gathered at [S, S + d_H/2].
    """
    half = config.head_counts()[2] // 2
    freqs = torch.tensor(config.kept_frequencies(layer_idx), dtype=torch.long)
    return torch.cat([freqs, freqs + half], dim=1)


class ModeGPTGatedMLP(nn.Module):
    """SwiGLU MLP of a given inner width (LlamaMLP reads its width from the config, which is per model)."""

    def __init__(self, hidden_size: int, width: int, act: str, bias: bool) -> None:
        super().__init__()
        self.gate_proj = nn.Linear(hidden_size, width, bias=bias)
        self.up_proj = nn.Linear(hidden_size, width, bias=bias)
        self.down_proj = nn.Linear(width, hidden_size, bias=bias)
        self.act_fn = ACT2FN[act]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(self.act_fn(self.gate_proj(x)) * self.up_proj(x))


def kernel_width(qk_dim: int, v_dim: int, device: torch.device) -> int:
    """The head width given to SDPA: its fused kernels (CPU flash, CUDA flash and memory-efficient) need equal
    q/k and v widths, and CUDA's a multiple of 8; otherwise SDPA silently falls back to its math kernel, which
    materialises every T x T score matrix (5x slower prefill attention on CPU at T = 512)."""
    width = max(qk_dim, v_dim)
    return -(-width // 8) * 8 if device.type == "cuda" else width


def _pad_width(x: torch.Tensor, width: int) -> torch.Tensor:
    return x if x.shape[-1] == width else F.pad(x, (0, width - x.shape[-1]))


def _attend(
    query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, mask: torch.Tensor | None, scale: float, dropout: float
) -> torch.Tensor:
    """One SDPA call; query [B, n_h, T, qk], key [B, n_kv, S, qk], value [B, n_kv, S, v] -> [B, n_h, T, v].

    ``mask`` is what the base model's ``create_causal_mask`` built (None, boolean or additive); None means
    plain causal attention, which SDPA's ``is_causal`` aligns top-left, so it needs T == S. With T > 1, q/k and
    v are zero-padded to one :func:`kernel_width` (zero columns change no score, and padded output columns
    are dropped), so the fused kernels run; a single decoding query gains nothing from that.
    """
    batch, n_h, q_len, _ = query.shape
    n_kv, kv_len, v_dim = key.shape[1], key.shape[2], value.shape[-1]
    groups = n_h // n_kv
    if mask is None and 1 < q_len < kv_len:
        mask = torch.ones(q_len, kv_len, dtype=torch.bool, device=query.device).tril(kv_len - q_len)
    is_causal = mask is None and q_len > 1
    extra: dict[str, Any] = {}
    if groups > 1 and q_len == 1 and (mask is None or mask.shape[1] == 1):
        # Decoding: a group's queries become the "sequence" axis of its KV head, so KV is never repeated.
        out = F.scaled_dot_product_attention(
            query.reshape(batch, n_kv, groups, -1), key, value, attn_mask=mask, dropout_p=dropout, scale=scale
        )
        return out.reshape(batch, n_h, 1, v_dim)
    if q_len > 1:
        width = kernel_width(query.shape[-1], v_dim, query.device)
        query, key, value = (_pad_width(t, width) for t in (query, key, value))
    if groups > 1:
        # CUDA's fused kernels take GQA only without a mask, at equal q/v widths, and in half precision
        # (memory-efficient attention has no GQA; flash and cuDNN no fp32); CPU flash takes it in any dtype.
        half = query.dtype in (torch.float16, torch.bfloat16)
        if mask is None and key.shape[-1] == value.shape[-1] and (half or query.device.type != "cuda"):
            extra["enable_gqa"] = True
        else:
            key = key.repeat_interleave(groups, dim=1)
            value = value.repeat_interleave(groups, dim=1)
    out = F.scaled_dot_product_attention(
        query, key, value, attn_mask=mask, dropout_p=dropout, is_causal=is_causal, scale=scale, **extra
    )
    return out if out.shape[-1] == v_dim else out[..., :v_dim]


class ModeGPTAttention(nn.Module):
    """Attention with per-layer q/k width qk_dim and value/output rank v_dim per head, original 1/sqrt(d_H).

    Called with the keyword arguments of the base decoder layer (Llama: position_embeddings; OPT: none)
    and returns (output, None) like the HF attention modules. K and V are cached at their own widths, in the
    :class:`Cache` the layer passes (see :func:`find_cache`); ``cache_updates`` counts the updates so the model can
    check that every layer filled the cache it returns.
    """

    def __init__(
        self, config: ModeGPTConfigMixin, layer_idx: int, out_name: str, prescale_query: bool = False,
        qk_norm: type[nn.Module] | None = None,
    ) -> None:
        super().__init__()
        self.layer_idx = layer_idx
        self.cache_updates = 0
        self.num_heads, self.num_kv_heads, head_dim = config.head_counts()
        dims = config.dims(layer_idx)
        self.qk_dim, self.v_dim = dims["qk_dim"], dims["v_dim"]
        self.scaling = head_dim**-0.5
        self.prescale_query = prescale_query  # OPT scales q before the product; kept for identical numerics
        self.attention_dropout = float(config.attention_dropout or 0.0)
        d = config.hidden_size
        self.q_proj = nn.Linear(d, self.num_heads * self.qk_dim, bias=config.qk_bias)
        self.k_proj = nn.Linear(d, self.num_kv_heads * self.qk_dim, bias=config.qk_bias)
        self.v_proj = nn.Linear(d, self.num_kv_heads * self.v_dim, bias=False)
        # The output projection keeps the base family's name (o_proj / out_proj), so checkpoints and the
        # project's adapters address it as in the dense model.
        self.out_name = out_name
        setattr(self, out_name, nn.Linear(self.num_heads * self.v_dim, d, bias=config.o_bias))
        if config.uses_rope:
            self.register_buffer("rope_gather", rope_gather_index(config, layer_idx))
        else:
            self.rope_gather = None
        # Per-head norms over the full head (the config guarantees qk_dim == head_dim when they exist).
        self.q_norm = None if qk_norm is None else qk_norm(self.qk_dim, eps=config.rms_norm_eps)
        self.k_norm = None if qk_norm is None else qk_norm(self.qk_dim, eps=config.rms_norm_eps)

    def _rope(
        self, query: torch.Tensor, key: torch.Tensor, position_embeddings: tuple[torch.Tensor, torch.Tensor]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        cos, sin = (t[..., self.rope_gather].transpose(1, 2) for t in position_embeddings)  # [B, n_kv, T, qk]
        key = key * cos + rotate_half(key) * sin
        shape = query.shape
        grouped = query.view(shape[0], self.num_kv_heads, -1, shape[2], shape[3])  # head h is in group h // g
        cos, sin = cos.unsqueeze(2), sin.unsqueeze(2)
        query = (grouped * cos + rotate_half(grouped) * sin).reshape(shape)
        return query, key

    def forward(
        self,
        hidden_states: torch.Tensor,
        position_embeddings: tuple[torch.Tensor, torch.Tensor] | None = None,
        attention_mask: torch.Tensor | None = None,
        **kwargs: Any,
    ) -> tuple[torch.Tensor, None]:
        batch, q_len, _ = hidden_states.shape
        query = self.q_proj(hidden_states)
        if self.prescale_query:
            query = query * self.scaling
        query = query.view(batch, q_len, self.num_heads, self.qk_dim)
        key = self.k_proj(hidden_states).view(batch, q_len, self.num_kv_heads, self.qk_dim)
        if self.q_norm is not None:
            query, key = self.q_norm(query), self.k_norm(key)
        query, key = query.transpose(1, 2), key.transpose(1, 2)
        value = self.v_proj(hidden_states).view(batch, q_len, self.num_kv_heads, self.v_dim).transpose(1, 2)
        if self.rope_gather is not None:
            query, key = self._rope(query, key, position_embeddings)
        cache = find_cache(kwargs)
        if cache is not None:
            key, value = cache.update(key, value, self.layer_idx)
            self.cache_updates += 1
        out = _attend(
            query, key, value, attention_mask,
            scale=1.0 if self.prescale_query else self.scaling,
            dropout=self.attention_dropout if self.training else 0.0,
        )
        out = out.transpose(1, 2).reshape(batch, q_len, self.num_heads * self.v_dim)
        return getattr(self, self.out_name)(out), None


class ModeGPTModelMixin:
    """Swaps the compressed modules into a freshly built HF model; the family hooks say where they go."""

    # The attention calls SDPA itself, with masks built for sdpa or eager; other kernels are not wired in.
    _supports_flash_attn = False
    _supports_flex_attn = False
    _supports_attention_backend = False

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "config_class" in cls.__dict__:  # a family's model class: save_pretrained then writes this code
            cls.register_for_auto_class("AutoModelForCausalLM")  # and the auto_map into the checkpoint

    def __init__(self, config: ModeGPTConfigMixin) -> None:
        super().__init__(config)  # the HF base model, at dense widths (on the meta device when loading)
        for i, layer in enumerate(self._decoder_layers()):
            self._install_layer(layer, i)
        self.post_init()  # initialise the new modules like the rest (and re-tie embeddings)
        self._compressed_attentions = [m for m in self.modules() if isinstance(m, ModeGPTAttention)]

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        """The base model's forward, then a check that every layer wrote the KV cache the output carries.

        Decoding from a cache that some layer never filled gives wrong tokens silently (it happened when
        transformers 5.24 renamed the argument): refuse it instead.
        """
        attentions = self._compressed_attentions
        before = [a.cache_updates for a in attentions]
        out = super().forward(*args, **kwargs)
        # 5.24+ outputs name the field `cache` (reading their `past_key_values` alias warns); earlier ones do not.
        field = "cache" if "cache" in getattr(out, "__dataclass_fields__", ()) else "past_key_values"
        values = out if isinstance(out, tuple) else [getattr(out, field, None)]
        cache = next((v for v in values if isinstance(v, Cache)), None)
        if cache is not None and any(a.cache_updates == b for a, b in zip(attentions, before, strict=True)):
            raise CacheNotFilledError(
                f"transformers {transformers.__version__} did not pass the KV cache to the compressed attention "
                f"(this checkpoint's code was tested with transformers {' to '.join(TESTED_TRANSFORMERS)}): "
                "install a tested release, or reassemble the checkpoint with a current modegpt"
            )
        return out

    def _decoder_layers(self) -> nn.ModuleList:
        raise NotImplementedError

    def _install_layer(self, layer: nn.Module, layer_idx: int) -> None:
        raise NotImplementedError


class _LlamaLayout:
    """Llama-style layers (``self_attn`` with ``o_proj``, SwiGLU ``mlp``), shared by the Llama-like families."""

    qk_norm: type[nn.Module] | None = None

    def _decoder_layers(self) -> nn.ModuleList:
        return self.model.layers

    def _install_layer(self, layer: nn.Module, layer_idx: int) -> None:
        c = self.config
        layer.self_attn = ModeGPTAttention(c, layer_idx, out_name="o_proj", qk_norm=self.qk_norm)
        bias = bool(getattr(c, "mlp_bias", False))
        layer.mlp = ModeGPTGatedMLP(c.hidden_size, c.dims(layer_idx)["mlp_width"], c.hidden_act, bias)


class ModeGPTLlamaForCausalLM(_LlamaLayout, ModeGPTModelMixin, LlamaForCausalLM):
    config_class = ModeGPTLlamaConfig


class ModeGPTPhi3ForCausalLM(_LlamaLayout, ModeGPTModelMixin, Phi3ForCausalLM):
    """Phi-3 with q/k/v and gate/up unfused: per-layer q/k and v widths differ after compression."""

    config_class = ModeGPTPhi3Config


class ModeGPTQwen3ForCausalLM(_LlamaLayout, ModeGPTModelMixin, Qwen3ForCausalLM):
    config_class = ModeGPTQwen3Config
    qk_norm = Qwen3RMSNorm


class ModeGPTOPTForCausalLM(ModeGPTModelMixin, OPTForCausalLM):
    config_class = ModeGPTOPTConfig

    def _decoder_layers(self) -> nn.ModuleList:
        return self.model.decoder.layers

    def _install_layer(self, layer: nn.Module, layer_idx: int) -> None:
        c = self.config
        width = c.dims(layer_idx)["mlp_width"]
        layer.self_attn = ModeGPTAttention(c, layer_idx, out_name="out_proj", prescale_query=True)
        layer.fc1 = nn.Linear(c.hidden_size, width, bias=c.enable_bias)
        layer.fc2 = nn.Linear(width, c.hidden_size, bias=c.enable_bias)
