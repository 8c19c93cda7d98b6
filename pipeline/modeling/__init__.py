"""Compressed-model classes (one pair per family, declared by its adapter), assembly, saving and loading.

``configuration_modegpt`` and ``modeling_modegpt`` depend on torch / transformers only: they are copied into
every saved checkpoint, so it loads with ``trust_remote_code=True`` where this project is not installed.
Importing this package registers the classes with the Auto* factories.
"""

from .build import (
    COMPRESSED_CLASSES,
    build_compressed_model,
    compressed_bias_flags,
    compressed_config,
    count_parameters,
    expected_parameter_count,
    identity_solutions,
)
from .configuration_modegpt import ModeGPTLlamaConfig, ModeGPTOPTConfig
from .io import load_compressed, register_compressed_models, save_compressed
from .modeling_modegpt import ModeGPTAttention, ModeGPTLlamaForCausalLM, ModeGPTOPTForCausalLM

register_compressed_models()

__all__ = [
    "COMPRESSED_CLASSES",
    "ModeGPTAttention",
    "ModeGPTLlamaConfig",
    "ModeGPTLlamaForCausalLM",
    "ModeGPTOPTConfig",
    "ModeGPTOPTForCausalLM",
    "build_compressed_model",
    "compressed_bias_flags",
    "compressed_config",
    "count_parameters",
    "expected_parameter_count",
    "identity_solutions",
    "load_compressed",
    "register_compressed_models",
    "save_compressed",
]
