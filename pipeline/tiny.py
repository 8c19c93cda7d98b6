"""Tiny random models built from real configs, and a byte-level tokenizer: for tests and smoke runs.

The configs keep each family's real structure (SmolLM2's Llama layout with GQA, OPT-125m's layout with
biases and learned positions) and shrink only the sizes, so tests exercise the same code paths as real
checkpoints without any download.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

# SmolLM2-135M's config with the sizes shrunk (GQA kept: 4 query heads share 2 KV heads).
SMOLLM2_LIKE: dict[str, Any] = {
    "hidden_act": "silu", "hidden_size": 64, "intermediate_size": 96, "num_hidden_layers": 3,
    "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 16, "max_position_embeddings": 256,
    "rms_norm_eps": 1e-5, "rope_theta": 100000.0, "tie_word_embeddings": True, "vocab_size": 272,
    "bos_token_id": 256, "eos_token_id": 257, "pad_token_id": 257,
}
# facebook/opt-125m's config with the sizes shrunk.
OPT125M_LIKE: dict[str, Any] = {
    "activation_function": "relu", "do_layer_norm_before": True, "enable_bias": True, "hidden_size": 64,
    "ffn_dim": 96, "num_hidden_layers": 3, "num_attention_heads": 4, "word_embed_proj_dim": 64,
    "max_position_embeddings": 256, "vocab_size": 272, "bos_token_id": 256, "eos_token_id": 257,
    "pad_token_id": 257, "layer_norm_elementwise_affine": True,
}


def tiny_config(family: str, **overrides: Any) -> Any:
    from transformers import LlamaConfig, OPTConfig

    if family == "llama":
        return LlamaConfig(**{**SMOLLM2_LIKE, **overrides})
    if family == "opt":
        return OPTConfig(**{**OPT125M_LIKE, **overrides})
    raise ValueError(f"no tiny config for family {family!r}: expected llama or opt")


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


def save_tiny_model(directory: str | Path, family: str, seed: int = 0, **overrides: Any) -> Path:
    """Write a tiny random model and the byte tokenizer as a local HF folder (a stand-in for a Hub repo)."""
    directory = Path(directory)
    model = random_model(tiny_config(family, **overrides), seed=seed)
    model.save_pretrained(directory)
    byte_tokenizer().save_pretrained(directory)
    return directory
