"""A compressed model in the tensor layout serving engines read: the Llama layout with per-layer MLP widths.

Engines take per-layer *MLP* widths (DeciLM / Nemotron-NAS in vLLM, SGLang, TRT-LLM; llama.cpp's ``deci``) or
none at all (the family's stock class), but no engine takes MoDeGPT's per-head q/k (Type-II) or v/o (Type-III)
cuts. So a model is exportable when every layer keeps its attention at full head width: its q/k/v/o weights
then have the dense shapes, and only the MLP's inner width changes from layer to layer. :func:`engine_model`
reads such a model (a compressed checkpoint or a dense one) into :class:`EngineModel`, which every writer
(HF folders, GGUF) takes; anything else is refused with one line naming the shape that would work.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

# Dense model types whose decoder is the Llama graph (RMSNorm, SiLU-gated MLP, full RoPE, GQA, no q/k norm):
# the architectures every engine's DeciLM / Llama path computes. Qwen2 adds q/k/v biases.
LLAMA_GRAPH_TYPES = ("llama", "mistral", "qwen2")
SHAPES = ("free", "deci", "stock")


class ExportError(ValueError):
    """A model (or solve) whose shapes the export target cannot hold; the message is one line."""


@dataclass
class EngineModel:
    """A Llama-graph decoder with per-layer MLP widths, tensors under HF Llama names (``nn.Linear`` layout)."""

    model_type: str  # the dense HF model_type: llama | mistral | qwen2
    config: dict[str, Any]  # the dense HF config (to_dict), widths aside
    mlp_widths: list[int]
    tensors: dict[str, Tensor] = field(repr=False)
    # q/k/v/o all carry biases (Qwen2's q/k/v; once compressed its value bias is folded into o's): the engines'
    # one ``attention_bias`` switch covers all four, so a missing one is written as zeros
    attention_bias: bool = False

    @property
    def num_layers(self) -> int:
        return len(self.mlp_widths)

    @property
    def uniform(self) -> bool:
        """Every layer has the same MLP width: the family's own (stock) class holds it."""
        return len(set(self.mlp_widths)) == 1

    def head_counts(self) -> tuple[int, int, int]:
        c = self.config
        n_h = int(c["num_attention_heads"])
        n_kv = int(c.get("num_key_value_heads") or n_h)
        head_dim = int(c.get("head_dim") or c["hidden_size"] // n_h)
        return n_h, n_kv, head_dim

    @property
    def tied_embeddings(self) -> bool:
        return "lm_head.weight" not in self.tensors


def _dense_model_type(config: Any) -> str:
    """The dense model_type behind a config (a compressed ``modegpt_*`` config keeps the dense fields)."""
    model_type = str(getattr(config, "model_type", ""))
    if not model_type.startswith("modegpt_"):
        return model_type
    # The compressed Llama class serves Llama, Mistral and Qwen2: the dense type is not in the config, but the
    # biases tell Qwen2 apart, and Mistral's graph (no sliding window once compressed) is Llama's.
    family = model_type.removeprefix("modegpt_")
    if family == "llama":
        return "qwen2" if getattr(config, "qk_bias", False) else "llama"
    return family


def _unpermute_rows(weight: Tensor, bias: Tensor | None, freqs: list[list[int]], n_heads: int, head_dim: int
                    ) -> tuple[Tensor, Tensor | None]:
    """Rows of a full-width compressed q or k projection back in the dense order.

    A compressed head is laid out [x_S, x_{S + d_H/2}] (S: the kept rotary frequencies, in selection order);
    at full width S is a permutation of every frequency, and engines rotate the dense order.
    """
    half = head_dim // 2
    per_head = [freqs[h * len(freqs) // n_heads] for h in range(n_heads)]
    order = []
    for h, s in enumerate(per_head):
        position = {f: i for i, f in enumerate(s)}
        inverse = [position[f] for f in range(half)]
        order += [h * head_dim + i for i in inverse] + [h * head_dim + half + i for i in inverse]
    index = torch.tensor(order, dtype=torch.long)
    return weight[index], None if bias is None else bias[index]


def engine_model(model: nn.Module, target: str = "any") -> EngineModel:
    """The model in the engine layout; raises :class:`ExportError` if its shapes are not ``deci``-exportable.

    ``target`` names what it is for in the messages (``deci``, ``stock``); ``stock`` also needs uniform widths.
    """
    config = model.config
    model_type = _dense_model_type(config)
    if model_type not in LLAMA_GRAPH_TYPES:
        raise ExportError(
            f"model_type {config.model_type!r} cannot be exported to a serving engine: only the Llama graph "
            f"({', '.join(LLAMA_GRAPH_TYPES)}) maps onto DeciLM / llama.cpp deci; OPT, Phi-3 and Qwen3 (q/k norm) "
            "stay in the transformers checkpoint (compression.shape=free)")
    n_h, n_kv, head_dim = (int(config.num_attention_heads),
                           int(getattr(config, "num_key_value_heads", None) or config.num_attention_heads),
                           int(getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads))
    layer_dims = getattr(config, "layer_dims", None)
    dense_width = int(config.intermediate_size)
    dims = layer_dims or [{"mlp_width": dense_width, "qk_dim": head_dim, "v_dim": head_dim}] * config.num_hidden_layers
    cut = [i for i, d in enumerate(dims) if int(d["qk_dim"]) != head_dim or int(d["v_dim"]) != head_dim]
    if cut:
        first = dims[cut[0]]
        raise ExportError(
            f"layer {cut[0]} keeps q/k width {first['qk_dim']} and v width {first['v_dim']} of {head_dim} per head "
            f"({len(cut)} layers cut inside the heads): no serving engine runs per-head q/k or v/o cuts; solve with "
            "compression.shape=deci (per-layer MLP widths, attention whole) or compression.shape=stock")
    widths = [int(d["mlp_width"]) for d in dims]
    if target == "stock" and len(set(widths)) != 1:
        raise ExportError(f"the MLP widths differ between layers ({min(widths)}..{max(widths)}): the stock "
                          f"{model_type} class needs one width; solve with compression.shape=stock, or export deci")
    state = {name: t.detach().to("cpu") for name, t in model.state_dict().items()}
    state = {n: t for n, t in state.items() if not n.endswith(("rope_gather", "rotary_emb.inv_freq"))}
    rope_index = getattr(config, "rope_index", None)
    if rope_index is not None:
        for i in range(len(widths)):
            freqs = [[int(f) for f in g] for g in rope_index[i]]
            if freqs == [list(range(head_dim // 2))] * n_kv:
                continue
            for name, heads in (("q_proj", n_h), ("k_proj", n_kv)):
                prefix = f"model.layers.{i}.self_attn.{name}"
                w, b = _unpermute_rows(state[f"{prefix}.weight"], state.get(f"{prefix}.bias"), freqs, heads, head_dim)
                state[f"{prefix}.weight"] = w
                if b is not None:
                    state[f"{prefix}.bias"] = b
    if getattr(config, "tie_word_embeddings", False):
        state.pop("lm_head.weight", None)
    projections = ("q_proj", "k_proj", "v_proj", "o_proj")
    attention_bias = any(f"model.layers.0.self_attn.{p}.bias" in state for p in projections)
    if attention_bias:
        for i in range(len(widths)):
            for p in projections:
                weight = state[f"model.layers.{i}.self_attn.{p}.weight"]
                state.setdefault(f"model.layers.{i}.self_attn.{p}.bias", weight.new_zeros(weight.shape[0]))
    dense_config = {k: v for k, v in config.to_dict().items()
                    if k not in ("layer_dims", "rope_index", "qk_bias", "o_bias", "auto_map", "architectures")}
    dense_config["model_type"] = model_type
    return EngineModel(model_type=model_type, config=dense_config, mlp_widths=widths, tensors=state,
                       attention_bias=attention_bias)
