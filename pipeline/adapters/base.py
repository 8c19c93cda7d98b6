"""What MoDeGPT needs to know about an architecture, behind one interface.

A :class:`ModelAdapter` names, for one model family, the decoder blocks, the linear layers of each
module MoDeGPT compresses, the attention head layout and whether RoPE is used. Running the model one
block at a time is generic: the inputs of block 0 (hidden states and whatever keyword arguments the
family passes, e.g. rotary embeddings or masks) are caught with a pre-hook, then each block is called
directly. Adding a family means adding one file with a subclass and registering it in ``__init__``.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any, ClassVar

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


@dataclass(frozen=True)
class BlockShape:
    hidden_size: int
    intermediate_size: int
    heads: HeadLayout
    gated_mlp: bool  # SwiGLU (up, gate -> down) vs a plain two-layer MLP (fc1 -> fc2)

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


@dataclass
class LayerAdapter:
    """The linear layers of one decoder block that MoDeGPT works on (HF ``nn.Linear``: weight is [out, in])."""

    block: nn.Module
    index: int
    q_proj: nn.Linear
    k_proj: nn.Linear
    v_proj: nn.Linear
    o_proj: nn.Linear
    up_proj: nn.Linear  # OPT: fc1
    gate_proj: nn.Linear | None  # None for non-gated MLPs
    down_proj: nn.Linear  # OPT: fc2

    @property
    def attention_input(self) -> nn.Module:
        """Its input is X of the key-query and value-output modules (after the block's first norm)."""
        return self.q_proj

    @property
    def mlp_hidden(self) -> nn.Module:
        """Its input is H, the MLP activation after the nonlinearity (and gating)."""
        return self.down_proj


class ModelAdapter(ABC):
    family: ClassVar[str]
    model_types: ClassVar[tuple[str, ...]]  # HF ``config.model_type`` values this adapter handles

    def __init__(self, model: nn.Module) -> None:
        self.model = model
        self.config = model.config

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
