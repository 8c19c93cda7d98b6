"""What MoDeGPT needs to know about an architecture, behind one interface.

A :class:`ModelAdapter` names, for one model family, the decoder blocks, the linear layers of each
module MoDeGPT compresses, the attention head layout and whether RoPE is used. It is also the family's one
registration point: defining a subclass with a ``family`` registers it, and it declares the HF model types
it accepts, its compressed config and model classes, its tiny test configs and which modules may be cut;
the CLI's choices, the compressed-class table and the tests' parameters are derived from that.
Running the model one block at a time is generic: the inputs of block 0 (hidden states and whatever keyword
arguments the family passes, e.g. rotary embeddings or masks) are caught with a pre-hook, then each block is
called directly.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, ClassVar, Union

import torch
from torch import nn


@dataclass(frozen=True)
class HeadLayout:
    num_heads: int
    num_kv_heads: int
    head_dim: int
    rope: bool  # rotary embedding in HF's rotate_half layout: column i pairs with i + head_dim/2

    @property
    def group_size(self) -> int:
        return self.num_heads // self.num_kv_heads


MODULES = ("mlp", "qk", "vo")  # Type-I, Type-II, Type-III


class UnsupportedModelError(ValueError):
    """The model's architecture (model_type or a config variant) has no adapter; the message is one line."""


@dataclass(frozen=True)
class BlockShape:
    hidden_size: int
    intermediate_size: int
    heads: HeadLayout
    gated_mlp: bool  # SwiGLU (up, gate -> down) vs a plain two-layer MLP (fc1 -> fc2)
    # Inner dimensions the family lets MoDeGPT cut; the others stay at full width and the layer's budget
    # goes to these (Qwen3's per-head q/k norm makes a q/k cut inexact: its adapter leaves out "qk").
    compressible: frozenset[str] = field(default_factory=lambda: frozenset(MODULES))

    def linear_params(self, mlp_width: int, qk_dim: int, v_dim: int, bias: dict[str, bool]) -> int:
        """Parameters of one block's linear layers at the given inner widths (biases included)."""
        d, h = self.hidden_size, self.heads
        n_mlp_in = 2 if self.gated_mlp else 1
        total = n_mlp_in * d * mlp_width + mlp_width * d
        total += d * qk_dim * (h.num_heads + h.num_kv_heads)  # q, k
        total += d * v_dim * h.num_kv_heads + h.num_heads * v_dim * d  # v, o
        total += n_mlp_in * mlp_width * bias.get("mlp_in", False) + d * bias.get("mlp_out", False)
        total += qk_dim * (h.num_heads + h.num_kv_heads) * bias.get("qk", False)
        total += v_dim * h.num_kv_heads * bias.get("v", False) + d * bias.get("o", False)
        return int(total)

    def dense_linear_params(self, bias: dict[str, bool]) -> int:
        return self.linear_params(self.intermediate_size, self.heads.head_dim, self.heads.head_dim, bias)


class _StopForward(Exception):
    pass


@dataclass(frozen=True)
class LinearSlice:
    """Output rows [start, stop) of a fused linear (Phi-3's qkv_proj, gate_up_proj), read like a linear of its own:
    the solver and the model builder only read ``weight`` / ``bias``, which are views of the fused tensors."""

    fused: nn.Linear
    start: int
    stop: int

    @property
    def weight(self) -> torch.Tensor:
        return self.fused.weight[self.start : self.stop]

    @property
    def bias(self) -> torch.Tensor | None:
        return None if self.fused.bias is None else self.fused.bias[self.start : self.stop]

    @property
    def in_features(self) -> int:
        return self.fused.in_features

    @property
    def out_features(self) -> int:
        return self.stop - self.start


Linear = Union[nn.Linear, LinearSlice]  # noqa: UP007 - a runtime alias, also on Python 3.10


def output_source(linear: Linear) -> tuple[nn.Module, slice]:
    """The module whose forward output holds ``linear``'s output, and where in its last dimension."""
    if isinstance(linear, LinearSlice):
        return linear.fused, slice(linear.start, linear.stop)
    return linear, slice(None)


@dataclass
class LayerAdapter:
    """The linear layers of one decoder block that MoDeGPT works on (HF ``nn.Linear``: weight is [out, in])."""

    block: nn.Module
    index: int
    q_proj: Linear
    k_proj: Linear
    v_proj: Linear
    o_proj: Linear
    up_proj: Linear  # OPT: fc1
    gate_proj: Linear | None  # None for non-gated MLPs
    down_proj: Linear  # OPT: fc2
    q_norm: nn.Module | None = None  # per-head norms on q and k before RoPE (Qwen3)
    k_norm: nn.Module | None = None

    @property
    def attention_input(self) -> nn.Module:
        """Its input is X of the key-query and value-output modules (after the block's first norm)."""
        return output_source(self.q_proj)[0]

    @property
    def mlp_hidden(self) -> nn.Module:
        """Its input is H, the MLP activation after the nonlinearity (and gating)."""
        return output_source(self.down_proj)[0]


class ModelAdapter(ABC):
    """One model family. Subclasses that set ``family`` register themselves (see :data:`ModelAdapter.registry`)."""

    family: ClassVar[str]
    model_types: ClassVar[tuple[str, ...]]  # HF ``config.model_type`` values this adapter handles
    # model_type -> its real published config (named in the comment beside it) with the sizes shrunk: tests and
    # smoke runs build random models from these, one per model type, so every claimed type is exercised.
    tiny_configs: ClassVar[dict[str, dict[str, Any]]]
    compressible: ClassVar[frozenset[str]] = frozenset(MODULES)
    registry: ClassVar[dict[str, type[ModelAdapter]]] = {}

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        family = cls.__dict__.get("family")
        if family is None:
            return
        if family in ModelAdapter.registry:
            raise TypeError(f"model family {family!r} is registered twice")
        for other in ModelAdapter.registry.values():
            shared = set(other.model_types) & set(cls.model_types)
            if shared:
                raise TypeError(f"{cls.__name__} and {other.__name__} both claim model types {sorted(shared)}")
        if set(cls.tiny_configs) != set(cls.model_types):
            raise TypeError(f"{cls.__name__}: tiny_configs must cover exactly its model types {cls.model_types}")
        if not cls.compressible <= set(MODULES):
            raise TypeError(f"{cls.__name__}.compressible must be a subset of {MODULES}")
        ModelAdapter.registry[family] = cls

    def __init__(self, model: nn.Module) -> None:
        self.model = model
        self.config = model.config

    @classmethod
    @abstractmethod
    def compressed_classes(cls) -> tuple[type, type]:
        """(config class, model class) of the compressed checkpoint (from ``pipeline.modeling``, imported inside
        the method: ``pipeline.assembly`` imports the adapters, and the modeling package stays a leaf)."""

    @classmethod
    def compressed_model_type(cls) -> str:
        return cls.compressed_classes()[0].model_type

    def check_supported(self) -> None:
        """Raise :class:`UnsupportedModelError` for config variants of the family that the adapter cannot handle."""
        return None

    # --- architecture knowledge, per family -------------------------------------------------------
    @abstractmethod
    def decoder_layers(self) -> nn.ModuleList: ...

    @abstractmethod
    def layer(self, index: int) -> LayerAdapter: ...

    @abstractmethod
    def head_layout(self) -> HeadLayout: ...

    @abstractmethod
    def block_shape(self) -> BlockShape: ...

    @abstractmethod
    def bias_flags(self) -> dict[str, bool]:
        """Which linear groups carry biases: keys mlp_in, mlp_out, qk, v, o."""

    # --- generic ----------------------------------------------------------------------------------
    @property
    def num_layers(self) -> int:
        return len(self.decoder_layers())

    def layers(self) -> list[LayerAdapter]:
        return [self.layer(i) for i in range(self.num_layers)]

    def block_linear_params(self) -> int:
        return self.block_shape().dense_linear_params(self.bias_flags()) * self.num_layers

    def total_params(self) -> int:
        return sum(p.numel() for p in self.model.parameters())  # parameters() yields tied weights once

    def move_non_layer_modules(self, device: torch.device | str) -> None:
        """Move embeddings, final norm, head and rotary buffers to ``device``; blocks stay where they are."""
        layers = {id(m) for m in self.decoder_layers().modules()}
        for module in self.model.modules():
            if id(module) in layers:
                continue
            for _, p in module.named_parameters(recurse=False):
                p.data = p.data.to(device)
            for name, b in module.named_buffers(recurse=False):
                module._buffers[name] = b.to(device)

    @torch.no_grad()
    def block_inputs(self, input_ids: torch.Tensor) -> tuple[torch.Tensor, dict[str, Any]]:
        """Hidden states entering block 0 and the keyword arguments every block is called with."""
        caught: dict[str, Any] = {}

        def catch(module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
            caught["hidden"] = args[0] if args else kwargs.pop("hidden_states")
            caught["kwargs"] = kwargs
            raise _StopForward

        handle = self.decoder_layers()[0].register_forward_pre_hook(catch, with_kwargs=True)
        try:
            self.model(input_ids=input_ids, use_cache=False)
        except _StopForward:
            pass
        finally:
            handle.remove()
        if "hidden" not in caught:
            raise RuntimeError(f"{type(self.model).__name__} never called its first decoder block")
        kwargs = {k: v for k, v in caught["kwargs"].items() if k != "hidden_states"}
        return caught["hidden"], kwargs

    @staticmethod
    def run_block(block: nn.Module, hidden: torch.Tensor, kwargs: dict[str, Any]) -> torch.Tensor:
        out = block(hidden, **kwargs)
        return out[0] if isinstance(out, tuple) else out
