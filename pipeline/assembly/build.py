"""Assemble a compressed model from a dense one and per-layer solutions (and the zero-compression solutions).

Architecture knowledge comes from the adapter: it finds the dense linears, and, applied to the compressed
model (same module names), the compressed ones. Solutions use the "X W" layout; HF linears store W.T.
"""

from __future__ import annotations

import copy
import dataclasses
import logging

import torch
from torch import nn
from transformers import PreTrainedConfig, PreTrainedModel

from pipeline.adapters import ADAPTERS, LayerAdapter, ModelAdapter
from pipeline.modegpt import fold_value_bias, rope_frequency_index
from pipeline.modeling.modeling_modegpt import rope_gather_index
from pipeline.plan import LayerPlan, LayerSolution

log = logging.getLogger(__name__)

# Derived from the adapters, which declare their compressed classes: family -> (config class, model class).
COMPRESSED_CLASSES: dict[str, tuple[type[PreTrainedConfig], type[PreTrainedModel]]] = {
    family: adapter.compressed_classes() for family, adapter in ADAPTERS.items()
}
# Dense config keys that must not reach the compressed config: e.g. a Mistral / Qwen2 sliding window would make
# DynamicCache evict keys that the (full-attention) Llama mask still expects.
_NOT_INHERITED = {"architectures", "auto_map", "layer_types", "sliding_window", "use_sliding_window"}


def compressed_bias_flags(adapter: ModelAdapter) -> dict[str, bool]:
    """Bias flags of the compressed linears: the value bias is folded into the output bias."""
    flags = dict(adapter.bias_flags())
    flags["o"] = flags["o"] or flags["v"]
    flags["v"] = False
    return flags


def expected_parameter_count(adapter: ModelAdapter, plans: list[LayerPlan]) -> int:
    """Parameters of the compressed model: the dense total minus what each layer's plan removes."""
    shape, dense_bias, bias = adapter.block_shape(), adapter.bias_flags(), compressed_bias_flags(adapter)
    removed = sum(
        shape.dense_linear_params(dense_bias) - shape.linear_params(p.mlp_width, p.qk_dim, p.v_dim, bias)
        for p in plans
    )
    return adapter.total_params() - removed


def count_parameters(model: nn.Module) -> int:
    """Distinct parameters (tied embeddings count once)."""
    return sum(p.numel() for p in model.parameters())  # parameters() already skips shared tensors


def _check_inputs(adapter: ModelAdapter, plans: list[LayerPlan], solutions: list[LayerSolution]) -> None:
    if not len(plans) == len(solutions) == adapter.num_layers:
        raise ValueError(f"{len(plans)} plans and {len(solutions)} solutions for {adapter.num_layers} layers")
    for i, (plan, sol) in enumerate(zip(plans, solutions, strict=True)):
        got = sol.plan(plan.sparsity)
        if (got.mlp_width, got.qk_dim, got.v_dim) != (plan.mlp_width, plan.qk_dim, plan.v_dim):
            raise ValueError(f"layer {i}: solution widths {got} do not match the plan {plan}")


def compressed_config(
    adapter: ModelAdapter, plans: list[LayerPlan], solutions: list[LayerSolution]
) -> PreTrainedConfig:
    """The compressed config: the dense config's fields plus per-layer widths, kept RoPE frequencies, biases."""
    config_cls, _ = adapter.compressed_classes()
    dense = adapter.config
    if getattr(dense, "sliding_window", None) and getattr(dense, "use_sliding_window", True):
        log.warning("dense model uses a sliding window of %s; the compressed model attends to the full context",
                    dense.sliding_window)
    fields = {f.name for f in dataclasses.fields(config_cls)}
    kwargs = {k: v for k, v in dense.to_dict().items() if k in fields and k not in _NOT_INHERITED}
    layout, bias = adapter.head_layout(), compressed_bias_flags(adapter)
    kwargs.update(
        layer_dims=[{"mlp_width": p.mlp_width, "qk_dim": p.qk_dim, "v_dim": p.v_dim} for p in plans],
        qk_bias=bias["qk"], o_bias=bias["o"], rope_index=None,
    )
    if layout.rope:
        kwargs["rope_index"] = [rope_frequency_index(s.qk_index, layout.head_dim).tolist() for s in solutions]
    config = config_cls(**kwargs)
    config.dtype = adapter.layer(0).q_proj.weight.dtype
    return config


def _param(value: torch.Tensor, like: torch.Tensor) -> nn.Parameter:
    return nn.Parameter(value.detach().to(device=like.device, dtype=like.dtype).contiguous(),
                        requires_grad=like.requires_grad)


def _set_linear(linear: nn.Linear, weight: torch.Tensor, bias: torch.Tensor | None, like: nn.Linear) -> None:
    if tuple(weight.shape) != tuple(linear.weight.shape):
        raise ValueError(f"weight of shape {tuple(weight.shape)} for a linear of {tuple(linear.weight.shape)}")
    linear.weight = _param(weight, like.weight)
    if (bias is None) != (linear.bias is None):
        raise ValueError(f"bias {'missing' if bias is None else 'given'} for {linear}")
    if bias is not None:
        linear.bias = _param(bias, like.weight)


def _rows(linear: nn.Linear, index: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
    index = index.to(device=linear.weight.device, dtype=torch.long)
    return linear.weight[index], None if linear.bias is None else linear.bias[index]


def head_rows(qk_index: torch.Tensor, n_heads: int, head_dim: int) -> torch.Tensor:
    """Output rows of a q or k projection kept by qk_index [n_kv, qk_dim]; head h uses group h // g."""
    per_head = qk_index.long().repeat_interleave(n_heads // qk_index.shape[0], dim=0)
    return (torch.arange(n_heads, device=per_head.device).unsqueeze(1) * head_dim + per_head).reshape(-1)


def _fill_layer(dense: LayerAdapter, new: LayerAdapter, sol: LayerSolution, adapter: ModelAdapter) -> None:
    layout, d = adapter.head_layout(), adapter.block_shape().hidden_size
    n_h, n_kv, head_dim = layout.num_heads, layout.num_kv_heads, layout.head_dim
    for new_in, dense_in in ((new.up_proj, dense.up_proj), (new.gate_proj, dense.gate_proj)):
        if dense_in is not None:
            _set_linear(new_in, *_rows(dense_in, sol.mlp_index), like=dense_in)
    _set_linear(new.down_proj, sol.mlp_down.T, dense.down_proj.bias, like=dense.down_proj)

    _set_linear(new.q_proj, *_rows(dense.q_proj, head_rows(sol.qk_index, n_h, head_dim)), like=dense.q_proj)
    _set_linear(new.k_proj, *_rows(dense.k_proj, head_rows(sol.qk_index, n_kv, head_dim)), like=dense.k_proj)
    v_dim = sol.v_weight.shape[2]
    _set_linear(new.v_proj, sol.v_weight.permute(0, 2, 1).reshape(n_kv * v_dim, d), None, like=dense.v_proj)
    if dense.v_proj.bias is not None and sol.o_bias is None:
        raise ValueError(f"layer {dense.index}: the dense value bias must be folded into the solution's o_bias")
    o_bias = sol.o_bias if sol.o_bias is not None else dense.o_proj.bias
    _set_linear(new.o_proj, sol.o_weight.reshape(n_h * v_dim, d).T, o_bias, like=dense.o_proj)


def _set_by_name(model: nn.Module, name: str, value: torch.Tensor, buffer: bool) -> None:
    owner_name, _, leaf = name.rpartition(".")
    owner = model.get_submodule(owner_name)
    if buffer:
        owner._buffers[leaf] = value  # keeps the buffer's persistence flag
    else:
        setattr(owner, leaf, value)


def _copy_uncompressed(dense_model: nn.Module, model: nn.Module) -> None:
    """Copy every tensor still on the meta device from the dense model, by name; shared tensors stay shared."""
    dense_params = dict(dense_model.named_parameters(remove_duplicate=False))
    dense_buffers = dict(dense_model.named_buffers(remove_duplicate=False))
    copies: dict[int, torch.Tensor] = {}
    for buffer, named in ((False, model.named_parameters), (True, model.named_buffers)):
        source = dense_buffers if buffer else dense_params
        for name, tensor in list(named(remove_duplicate=False)):
            if not tensor.is_meta:
                continue
            if id(tensor) not in copies:
                if name not in source:
                    raise KeyError(f"{name} of the compressed model has no counterpart in the dense model")
                src = source[name].detach()
                copies[id(tensor)] = src.clone() if buffer else nn.Parameter(src.clone(), source[name].requires_grad)
            _set_by_name(model, name, copies[id(tensor)], buffer)


@torch.no_grad()
def build_compressed_model(
    dense_model: PreTrainedModel, adapter: ModelAdapter, plans: list[LayerPlan], solutions: list[LayerSolution]
) -> PreTrainedModel:
    """The compressed model: dense weights outside the compressed linears, solutions inside; dense dtype/devices."""
    _check_inputs(adapter, plans, solutions)
    config = compressed_config(adapter, plans, solutions)
    attn = getattr(dense_model.config, "_attn_implementation", None)
    config._attn_implementation = attn if attn in ("sdpa", "eager") else "sdpa"  # the masks SDPA can take
    _, model_cls = adapter.compressed_classes()
    with torch.device("meta"):  # shapes only: no memory for a dense-sized model, every tensor is set below
        model = model_cls(config)
    compressed = type(adapter)(model)  # same module names, so the family's adapter finds the new linears
    for i, (sol, dense_layer) in enumerate(zip(solutions, adapter.layers(), strict=True)):
        new_layer = compressed.layer(i)
        _fill_layer(dense_layer, new_layer, sol, adapter)
        if adapter.head_layout().rope:
            _attention_of(new_layer).rope_gather = rope_gather_index(config, i).to(new_layer.q_proj.weight.device)
    _copy_uncompressed(dense_model, model)
    leftover = [n for n, t in [*model.named_parameters(), *model.named_buffers()] if t.is_meta]
    if leftover:
        raise RuntimeError(f"compressed model tensors left unset: {leftover}")
    model.generation_config = copy.deepcopy(dense_model.generation_config)
    return model.eval()


def _attention_of(layer: LayerAdapter) -> nn.Module:
    """The attention module owning a layer's q_proj (found by identity, so no module names are assumed)."""
    return next(m for m in layer.block.modules() if getattr(m, "q_proj", None) is layer.q_proj)


@torch.no_grad()
def identity_solutions(adapter: ModelAdapter) -> tuple[list[LayerPlan], list[LayerSolution]]:
    """Zero-compression plans and solutions read off the dense weights (rate 0; exact up to rounding)."""
    layout, d = adapter.head_layout(), adapter.block_shape().hidden_size
    n_h, n_kv, head_dim = layout.num_heads, layout.num_kv_heads, layout.head_dim
    plans, solutions = [], []
    for layer in adapter.layers():
        w_o = layer.o_proj.weight.T.reshape(n_h, head_dim, d)
        o_bias = None
        if layer.v_proj.bias is not None:
            b_o = layer.o_proj.bias if layer.o_proj.bias is not None else w_o.new_zeros(d)
            o_bias = fold_value_bias(layer.v_proj.bias, w_o, b_o, layout.group_size).to(w_o.dtype)
        sol = LayerSolution(
            mlp_index=torch.arange(layer.down_proj.weight.shape[1]),
            mlp_down=layer.down_proj.weight.T.clone(),
            # arange is already in the RoPE pair layout [S, S + d_H/2] with S = arange(d_H/2)
            qk_index=torch.arange(head_dim).expand(n_kv, head_dim).clone(),
            v_weight=layer.v_proj.weight.T.reshape(d, n_kv, head_dim).permute(1, 0, 2).clone(),
            o_weight=w_o.clone(),
            o_bias=o_bias,
        )
        solutions.append(sol)
        plans.append(sol.plan(0.0))
    return plans, solutions
