"""GGUF files of an :class:`~pipeline.export.layout.EngineModel` for llama.cpp (and what reads GGUF: Ollama, LM
Studio, llama-cpp-python), through the ``gguf`` package; quantized copies through llama.cpp itself.

Architectures: ``deci`` (llama.cpp builds each layer with its own ``n_ff``: per-layer MLP widths) and, for uniform
widths, the family's own ``llama`` / ``qwen2`` (llama.cpp's ``llama`` reads a per-layer width array but builds every
layer with layer 0's width, so it is never used for mixed widths). The ``llama`` and ``deci`` graphs rotate
interleaved pairs while HF rotates halves, so their q/k rows are permuted; ``qwen2`` rotates halves (NeoX).
The tokenizer is copied from the source GGUF when the dense model came from one, else built from the HF
``tokenizer.json`` (GPT-2-style byte-level BPE).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
from torch import Tensor

from pipeline.artifacts import atomic_path

from .layout import EngineModel, ExportError

log = logging.getLogger(__name__)

GGUF_DTYPES = ("f32", "f16")
# The quantizations llama.cpp makes from an F32/F16 file (llama_ftype values of llama.h).
QUANT_TYPES = {"q8_0": 7, "q6_k": 18, "q5_k_m": 17, "q4_k_m": 15, "q4_0": 2, "q3_k_m": 12, "q2_k": 10}

# HF Llama tensor name (per layer: the part after ``model.layers.N.``) -> GGUF name
_LAYER_NAMES = {
    "input_layernorm.weight": "attn_norm.weight",
    "self_attn.q_proj.weight": "attn_q.weight", "self_attn.q_proj.bias": "attn_q.bias",
    "self_attn.k_proj.weight": "attn_k.weight", "self_attn.k_proj.bias": "attn_k.bias",
    "self_attn.v_proj.weight": "attn_v.weight", "self_attn.v_proj.bias": "attn_v.bias",
    "self_attn.o_proj.weight": "attn_output.weight", "self_attn.o_proj.bias": "attn_output.bias",
    "post_attention_layernorm.weight": "ffn_norm.weight",
    "mlp.gate_proj.weight": "ffn_gate.weight", "mlp.up_proj.weight": "ffn_up.weight",
    "mlp.down_proj.weight": "ffn_down.weight",
}
_MODEL_NAMES = {"model.embed_tokens.weight": "token_embd.weight", "model.norm.weight": "output_norm.weight",
                "lm_head.weight": "output.weight"}


def gguf_architecture(em: EngineModel) -> str:
    """``deci`` for per-layer widths; the family's own architecture when every layer has the same width."""
    if not em.uniform:
        return "deci"
    return "qwen2" if em.model_type == "qwen2" else "llama"


def _interleave_pairs(t: Tensor, heads: int) -> Tensor:
    """Rows of a q/k projection (or bias) from HF's rotate-half order to llama.cpp's interleaved pairs."""
    head_dim = t.shape[0] // heads
    return t.reshape(heads, 2, head_dim // 2, *t.shape[1:]).transpose(1, 2).reshape(t.shape)


def _gguf_name(name: str) -> str:
    if name in _MODEL_NAMES:
        return _MODEL_NAMES[name]
    parts = name.split(".")
    if parts[:2] != ["model", "layers"] or ".".join(parts[3:]) not in _LAYER_NAMES:
        raise ExportError(f"tensor {name} has no GGUF counterpart in the Llama layout")
    return f"blk.{parts[2]}.{_LAYER_NAMES['.'.join(parts[3:])]}"


def _check_rope(config: dict[str, Any]) -> float:
    """The RoPE base; scaled RoPE variants are refused (their GGUF keys are not written here)."""
    params = config.get("rope_parameters") or config.get("rope_scaling") or {}
    rope_type = params.get("rope_type", params.get("type", "default"))
    if rope_type not in (None, "default"):
        raise ExportError(f"rope_type {rope_type!r} is not written to GGUF yet: export the HF folder and convert "
                          "it with llama.cpp's convert_hf_to_gguf.py")
    return float(params.get("rope_theta", config.get("rope_theta", 10000.0)))


def _tokenizer_from_gguf(writer: Any, source: Path) -> None:
    from gguf import GGUFReader

    reader = GGUFReader(source)
    for name, field in reader.fields.items():
        if name.startswith("tokenizer."):
            sub_type = field.types[1] if len(field.types) > 1 else None
            writer.add_key_value(name, field.contents(), field.types[0], sub_type)


def _tokenizer_from_hf(writer: Any, tokenizer_dir: Path, vocab_size: int) -> None:
    from gguf import SpecialVocab, TokenType
    from gguf.vocab import BpeVocab

    try:
        vocab = BpeVocab(tokenizer_dir)
    except FileNotFoundError:
        raise ExportError(f"{tokenizer_dir}: only GPT-2-style byte-level BPE tokenizers (tokenizer.json) are "
                          "written to GGUF here; convert the exported HF folder with llama.cpp's "
                          "convert_hf_to_gguf.py") from None
    tokens, _, types = (list(x) for x in zip(*vocab.all_tokens(), strict=True))
    special = SpecialVocab(tokenizer_dir, load_merges=True, n_vocab=vocab_size)
    padding = [f"[PAD{i}]" for i in range(len(tokens), vocab_size)]
    if not special.merges:
        # llama.cpp requires merges for a BPE vocabulary (and gguf writes no empty array): a merge of two padding
        # tokens, whose result is a third, is valid for every BPE reader and never applies (no merge forms its parts)
        if len(padding) < 3:
            raise ExportError(f"{tokenizer_dir}: a BPE vocabulary without merges needs 3 unused embedding rows")
        padding[2] = padding[0] + padding[1]
        special.merges = [f"{padding[0]} {padding[1]}"]
    # llama.cpp sizes the embedding from the token list: pad it to the model's (often rounded-up) vocabulary
    tokens += [p.encode() for p in padding]
    types += [TokenType.UNUSED] * len(padding)
    writer.add_tokenizer_model("gpt2")
    # llama.cpp picks its pre-tokenizer regex by name; "default" is GPT-2's (exact for byte-level vocabularies whose
    # merges cross no such boundary, approximate otherwise: convert_hf_to_gguf.py identifies a vocabulary's own)
    writer.add_tokenizer_pre("default")
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    special.add_to_gguf(writer, quiet=True)


def write_gguf(em: EngineModel, out: Path, dtype: str, tokenizer_dir: Path, source_gguf: Path | None = None,
               name: str = "model") -> Path:
    """One GGUF file of ``em`` at ``dtype`` (``f32`` / ``f16``; norms and biases stay F32), written atomically."""
    import gguf

    if dtype not in GGUF_DTYPES:
        raise ExportError(f"GGUF dtype {dtype!r} is invalid: expected one of {', '.join(GGUF_DTYPES)}")
    arch = gguf_architecture(em)
    c = em.config
    n_h, n_kv, head_dim = em.head_counts()
    rope_base = _check_rope(c)
    with atomic_path(out) as tmp:
        writer = gguf.GGUFWriter(tmp, arch)
        writer.add_name(name)
        writer.add_file_type(gguf.LlamaFileType.ALL_F32 if dtype == "f32" else gguf.LlamaFileType.MOSTLY_F16)
        writer.add_context_length(int(c.get("max_position_embeddings", 2048)))
        writer.add_embedding_length(int(c["hidden_size"]))
        writer.add_block_count(em.num_layers)
        writer.add_feed_forward_length(em.mlp_widths if arch == "deci" else em.mlp_widths[0])
        writer.add_head_count([n_h] * em.num_layers if arch == "deci" else n_h)
        writer.add_head_count_kv([n_kv] * em.num_layers if arch == "deci" else n_kv)
        writer.add_key_length(head_dim)
        writer.add_value_length(head_dim)
        writer.add_rope_dimension_count(head_dim)
        writer.add_rope_freq_base(rope_base)
        writer.add_layer_norm_rms_eps(float(c.get("rms_norm_eps", 1e-6)))
        writer.add_vocab_size(int(c["vocab_size"]))
        if source_gguf is not None:
            _tokenizer_from_gguf(writer, source_gguf)
        else:
            _tokenizer_from_hf(writer, tokenizer_dir, int(c["vocab_size"]))
        permute = arch != "qwen2"
        for hf_name, tensor in em.tensors.items():
            t = tensor.detach().float()
            if permute and ".self_attn.q_proj." in hf_name:
                t = _interleave_pairs(t, n_h)
            elif permute and ".self_attn.k_proj." in hf_name:
                t = _interleave_pairs(t, n_kv)
            keep_f32 = dtype == "f32" or t.dim() == 1
            array = t.numpy().astype(np.float32 if keep_f32 else np.float16)
            writer.add_tensor(_gguf_name(hf_name), array)
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
    log.info("wrote %s (%s, %s, %d layers, MLP widths %d..%d)", out, arch, dtype, em.num_layers,
             min(em.mlp_widths), max(em.mlp_widths))
    return out


def gguf_tensor_shapes(path: Path) -> dict[str, tuple[int, ...]]:
    """Every tensor's shape in a GGUF file as llama.cpp lists it (fastest dimension first)."""
    from gguf import GGUFReader

    return {t.name: tuple(int(n) for n in t.shape) for t in GGUFReader(path).tensors}


def gguf_metadata(path: Path) -> dict[str, Any]:
    """The GGUF key/values other than the tokenizer's (scalars and arrays as Python values)."""
    from gguf import GGUFReader

    reader = GGUFReader(path)
    return {name: field.contents() for name, field in reader.fields.items()
            if not name.startswith(("tokenizer.", "GGUF."))}


def expected_gguf_shapes(em: EngineModel) -> dict[str, tuple[int, ...]]:
    """The shapes a GGUF of ``em`` must hold (GGUF order: reversed from torch's)."""
    return {_gguf_name(n): tuple(reversed(t.shape)) for n, t in em.tensors.items()}


def quantizer() -> Any | None:
    """llama.cpp's quantizer from llama-cpp-python, if installed (``make engines``), else None."""
    try:
        import llama_cpp
    except ImportError:
        return None
    return llama_cpp


def quantize_gguf(source: Path, out: Path, quant: str) -> Path:
    """``source`` (F32/F16 GGUF) quantized by llama.cpp to ``quant`` (a :data:`QUANT_TYPES` name), atomically."""
    if quant not in QUANT_TYPES:
        raise ExportError(f"export.quantize entry {quant!r} is invalid: expected some of {', '.join(QUANT_TYPES)}")
    llama_cpp = quantizer()
    if llama_cpp is None:
        raise ExportError("quantized GGUFs need llama.cpp: `make engines` installs llama-cpp-python into "
                          ".venv-engines (run the export from there), or set export.quantize=[]")
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = QUANT_TYPES[quant]
    with atomic_path(out) as tmp:
        status = llama_cpp.llama_model_quantize(str(source).encode(), str(tmp).encode(), params)
        if status != 0:
            raise ExportError(f"llama.cpp could not quantize {source} to {quant} (status {status})")
    return out

