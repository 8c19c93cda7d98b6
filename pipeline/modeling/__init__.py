"""Compressed-model classes: one config/model pair per family (its adapter declares which).

``configuration_modegpt`` and ``modeling_modegpt`` depend on torch / transformers only: they are copied into
every saved checkpoint, so it loads with ``trust_remote_code=True`` where this project is not installed.
Building, saving and registering them with the Auto* factories is :mod:`pipeline.assembly`'s work.
"""

from .configuration_modegpt import ModeGPTConfigMixin, ModeGPTLlamaConfig, ModeGPTOPTConfig
from .modeling_modegpt import ModeGPTAttention, ModeGPTLlamaForCausalLM, ModeGPTModelMixin, ModeGPTOPTForCausalLM

__all__ = [
    "ModeGPTAttention",
    "ModeGPTConfigMixin",
    "ModeGPTLlamaConfig",
    "ModeGPTLlamaForCausalLM",
    "ModeGPTModelMixin",
    "ModeGPTOPTConfig",
    "ModeGPTOPTForCausalLM",
]
