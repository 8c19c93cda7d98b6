"""Registering the compressed classes with the Auto* factories, saving and loading compressed checkpoints."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from transformers import AutoConfig, AutoModelForCausalLM, PreTrainedModel

from .build import COMPRESSED_CLASSES

DEFAULT_MAX_SHARD_SIZE = "5GB"


def register_compressed_models() -> None:
    """Let AutoConfig / AutoModelForCausalLM resolve model_type modegpt_* to this package (idempotent)."""
    for config_cls, model_cls in COMPRESSED_CLASSES.values():
        AutoConfig.register(config_cls.model_type, config_cls, exist_ok=True)
        AutoModelForCausalLM.register(config_cls, model_cls, exist_ok=True)


def save_compressed(
    model: PreTrainedModel,
    tokenizer: Any | None,
    directory: str | Path,
    max_shard_size: str | int = DEFAULT_MAX_SHARD_SIZE,
) -> Path:
    """safetensors shards + config + generation config + the modeling code (auto_map), and the tokenizer."""
    directory = Path(directory)
    model.save_pretrained(directory, max_shard_size=max_shard_size)
    if tokenizer is not None:
        tokenizer.save_pretrained(directory)
    return directory


def load_compressed(directory: str | Path, **kwargs: Any) -> PreTrainedModel:
    """Load a saved compressed model with this project's classes (no remote code needed)."""
    register_compressed_models()
    return AutoModelForCausalLM.from_pretrained(directory, **kwargs)
