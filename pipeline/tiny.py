"""Tiny random models built from real configs, and a byte-level tokenizer: for tests and smoke runs.

Each adapter declares a tiny config per model type it claims (the real published config with only the sizes
shrunk), so tests exercise the same code paths as real checkpoints without any download.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from pipeline.adapters import ADAPTERS, adapter_class


def representative_model_type(family: str) -> str:
    """The model type a family's pipeline tests run on: the first one its adapter claims."""
    return adapter_class(family).model_types[0]


def tiny_config(model_type: str, **overrides: Any) -> Any:
    """The tiny config of ``model_type`` (a family name selects its representative model type)."""
    from transformers import AutoConfig

    if model_type in ADAPTERS:
        model_type = representative_model_type(model_type)
    owner = next((a for a in ADAPTERS.values() if model_type in a.tiny_configs), None)
    if owner is None:
        known = ", ".join(t for a in ADAPTERS.values() for t in a.tiny_configs)
        raise ValueError(f"no tiny config for model type {model_type!r}: expected one of {known}")
    return AutoConfig.for_model(model_type, **{**owner.tiny_configs[model_type], **overrides})


def random_model(config: Any, seed: int = 0) -> torch.nn.Module:
    """A randomly initialised causal LM; weights are scaled up so activations are not near-degenerate."""
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config, attn_implementation="sdpa", dtype=torch.float32)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() == 2 and "embed" not in name:
                p.normal_(0.0, 1.0 / p.shape[1] ** 0.5)
            elif p.dim() == 1 and name.endswith("bias"):
                p.normal_(0.0, 0.1)
    return model.eval()


def byte_tokenizer() -> Any:
    """A byte-level tokenizer (256 byte tokens + BOS/EOS) built offline."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    vocab = {ch: i for i, ch in enumerate(alphabet)}
    vocab.update({"<s>": 256, "</s>": 257})
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tok.decoder = decoders.ByteLevel()
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="</s>")


def save_tiny_model(directory: str | Path, model_type: str, seed: int = 0, **overrides: Any) -> Path:
    """Write a tiny random model and the byte tokenizer as a local HF folder (a stand-in for a Hub repo)."""
    directory = Path(directory)
    model = random_model(tiny_config(model_type, **overrides), seed=seed)
    model.save_pretrained(directory)
    byte_tokenizer().save_pretrained(directory)
    return directory


def tiny_engine_shaped(model_type: str, mlp_widths: list[int], seed: int = 0, **overrides: Any) -> torch.nn.Module:
    """A tiny compressed model with attention whole and the given per-layer MLP widths (random kept units, dense
    down rows): the shape ``compression.shape=deci`` solves to, without a solve, for export tests."""
    from pipeline.adapters import adapter_for
    from pipeline.assembly.build import build_compressed_model, identity_solutions
    from pipeline.plan import LayerSolution

    config = tiny_config(model_type, num_hidden_layers=len(mlp_widths), **overrides)
    dense = random_model(config, seed=seed)
    adapter = adapter_for(dense)
    _, solutions = identity_solutions(adapter)
    generator = torch.Generator().manual_seed(seed + 1)
    narrowed = []
    for width, sol in zip(mlp_widths, solutions, strict=True):
        keep = torch.randperm(sol.mlp_index.numel(), generator=generator)[:width].sort().values
        narrowed.append(LayerSolution(mlp_index=keep, mlp_down=sol.mlp_down[keep], qk_index=sol.qk_index,
                                      v_weight=sol.v_weight, o_weight=sol.o_weight, o_bias=sol.o_bias))
    return build_compressed_model(dense, adapter, [s.plan(0.0) for s in narrowed], narrowed)
