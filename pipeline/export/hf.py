"""HF folders of an :class:`~pipeline.export.layout.EngineModel` that serving engines load.

- ``deci``: the DeciLM / Nemotron-NAS layout (``DeciLMForCausalLM``, per-layer ``block_configs``) that vLLM,
  SGLang and TensorRT-LLM serve, with this package's ``configuration_decilm.py`` beside the weights (transformers
  has no class for it; the engines read the config through ``trust_remote_code``, config code only).
- ``stock``: one MLP width everywhere, so the family's own class (``LlamaForCausalLM``, ``Qwen2ForCausalLM``)
  holds it and everything loads it with no remote code.

Those engines compute each layer's MLP width from ``ffn_mult`` as ``_find_multiple(int(2·ffn_mult·hidden/3),
256)``, so ``ffn_mult`` holds widths that are multiples of 256 (``compression.shape=deci`` with the default
``round_to``). vLLM (``nemotron_nas.py``) also reads a block's ``ffn.intermediate_size`` when it has no
``ffn_mult``: other widths are written that way, which vLLM serves and SGLang / TensorRT-LLM do not (a warning
says so); llama.cpp's GGUF takes any width.
"""

from __future__ import annotations

import json
import logging
import shutil
from fractions import Fraction
from pathlib import Path
from typing import Any

from safetensors.torch import save_file

from pipeline.artifacts import atomic_dir

from .layout import EngineModel, ExportError

log = logging.getLogger(__name__)

DECI_MULTIPLE = 256  # the engines round ffn_mult's width up to this
CONFIG_MODULE = Path(__file__).with_name("configuration_decilm.py")
STOCK_CLASSES = {"llama": "LlamaForCausalLM", "mistral": "MistralForCausalLM", "qwen2": "Qwen2ForCausalLM"}
# Dense config keys a stock or DeciLM config does not take over (widths are set per layer or anew)
_DROPPED = ("architectures", "auto_map", "layer_types", "sliding_window", "use_sliding_window", "max_window_layers",
            "transformers_version", "dtype", "torch_dtype", "_name_or_path")


def engine_width(ffn_mult: float, hidden: int) -> int:
    """The MLP width vLLM / SGLang / TRT-LLM build for ``ffn_mult`` (their ``_ffn_mult_to_intermediate_size``)."""
    width = int(2 * ffn_mult * hidden / 3)
    return -(-width // DECI_MULTIPLE) * DECI_MULTIPLE


def ffn_mult_for(width: int, hidden: int) -> float:
    """An ``ffn_mult`` whose engine width is exactly ``width`` (a positive multiple of 256)."""
    if width % DECI_MULTIPLE or width <= 0:
        raise ExportError(f"MLP width {width} is not a positive multiple of {DECI_MULTIPLE}: no ffn_mult gives it")
    mult = float(Fraction(3 * width, 2 * hidden))
    if engine_width(mult, hidden) != width:  # float rounding put int(...) one multiple off
        mult = float(Fraction(3 * width - 1, 2 * hidden))
    assert engine_width(mult, hidden) == width
    return mult


def deci_config(em: EngineModel) -> dict[str, Any]:
    n_h, n_kv, _ = em.head_counts()
    hidden = int(em.config["hidden_size"])
    base = {k: v for k, v in em.config.items() if k not in _DROPPED and k not in ("intermediate_size",
                                                                                    "num_key_value_heads")}
    if "rope_theta" not in base and (base.get("rope_parameters") or {}).get("rope_theta") is not None:
        # a transformers-5 config keeps the RoPE base inside rope_parameters (vLLM reads it there); the
        # engines' DeciLM configs read the top-level key
        base["rope_theta"] = base["rope_parameters"]["rope_theta"]
    off_grid = [w for w in em.mlp_widths if w % DECI_MULTIPLE]
    if off_grid:
        log.warning("%d MLP widths are not multiples of %d (e.g. %d): written as ffn.intermediate_size, which vLLM "
                    "serves and SGLang / TensorRT-LLM do not (compression.round_to=%d fits them all)",
                    len(off_grid), DECI_MULTIPLE, off_grid[0], DECI_MULTIPLE)

    def ffn(width: int) -> dict[str, Any]:
        size = {"intermediate_size": width} if width % DECI_MULTIPLE else {"ffn_mult": ffn_mult_for(width, hidden)}
        return {"no_op": False, "replace_with_linear": False, **size}

    blocks = [{"attention": {"no_op": False, "replace_with_linear": False, "n_heads_in_group": n_h // n_kv},
               "ffn": ffn(w)} for w in em.mlp_widths]
    return base | {
        "architectures": ["DeciLMForCausalLM"], "model_type": "nemotron-nas",
        "auto_map": {"AutoConfig": "configuration_decilm.DeciLMConfig"},
        "attention_bias": em.attention_bias, "mlp_bias": False, "block_configs": blocks,
        "tie_word_embeddings": em.tied_embeddings,
    }


def stock_config(em: EngineModel) -> dict[str, Any]:
    if not em.uniform:
        raise ExportError(f"MLP widths {min(em.mlp_widths)}..{max(em.mlp_widths)} differ between layers: the stock "
                          f"{em.model_type} class holds one width; solve with compression.shape=stock")
    base = {k: v for k, v in em.config.items() if k not in _DROPPED}
    config = base | {"architectures": [STOCK_CLASSES[em.model_type]], "intermediate_size": em.mlp_widths[0],
                     "tie_word_embeddings": em.tied_embeddings}
    if em.model_type == "llama":
        config["attention_bias"] = em.attention_bias
    elif em.attention_bias and em.model_type != "qwen2":
        raise ExportError(f"the stock {em.model_type} class has no attention biases")
    if em.model_type == "qwen2" and "model.layers.0.self_attn.o_proj.bias" in em.tensors:
        # Qwen2's o_proj has no bias: the compressed model folded its value bias there. A zero-bias o needs none.
        if any(float(em.tensors[f"model.layers.{i}.self_attn.o_proj.bias"].abs().max()) > 0
               for i in range(em.num_layers)):
            raise ExportError("this Qwen2 model carries an output-projection bias (its value bias, folded), which "
                              "Qwen2ForCausalLM cannot hold: export with compression.shape=deci")
    return config


def _stock_tensors(em: EngineModel) -> dict[str, Any]:
    """Qwen2's stock class has q/k/v biases but no o bias (a zero one, from the engine layout, is dropped)."""
    if em.model_type != "qwen2":
        return em.tensors
    return {n: t for n, t in em.tensors.items() if not n.endswith("self_attn.o_proj.bias")}


def write_hf(em: EngineModel, tokenizer: Any, out: Path, kind: str) -> Path:
    """An HF folder of ``em`` (``kind``: ``deci`` or ``stock``) with its tokenizer, written atomically."""
    if kind == "deci":
        config, tensors = deci_config(em), em.tensors
    elif kind == "stock":
        config, tensors = stock_config(em), _stock_tensors(em)
    else:
        raise ExportError(f"HF export kind {kind!r} is invalid: expected deci or stock")
    with atomic_dir(out) as tmp:
        (tmp / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
        if kind == "deci":
            shutil.copyfile(CONFIG_MODULE, tmp / CONFIG_MODULE.name)
        weights = {n: t.contiguous() for n, t in tensors.items()}
        save_file(weights, str(tmp / "model.safetensors"), metadata={"format": "pt"})
        tokenizer.save_pretrained(tmp)
        generation = {k: em.config[k] for k in ("bos_token_id", "eos_token_id", "pad_token_id") if em.config.get(k)
                      is not None}
        (tmp / "generation_config.json").write_text(json.dumps(generation, indent=2) + "\n")
    return out
