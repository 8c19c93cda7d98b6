"""Capture and solve cost of a ~1B model built at random from a real architecture (nothing to download).

    .venv/bin/python benchmarks/random_model.py -- device=cuda model.dtype=bfloat16     # Llama-3.2-1B layout
    .venv/bin/python benchmarks/random_model.py --arch opt-1.3b -- device=cuda model.dtype=float16
    .venv/bin/python benchmarks/random_model.py --layers 2 --calibration default \\
        -- calibration.num_samples=4 calibration.seq_len=128                          # CPU smoke run

The model (weights ~ N(0, 1/fan-in), the byte-level tokenizer of ``pipeline.tiny``) is written once under
``--root``/random-weights. Then ``compress_cost.measure_stages`` runs each stage on it in a fresh process
and reports wall time, peak memory, and the achieved fraction of measured matmul throughput. The weights
are random, so only the costs mean anything, not the quality of the result.
"""

from __future__ import annotations

import argparse
import multiprocessing
from pathlib import Path
from typing import Any

from compress_cost import measure_stages

from pipeline.artifacts import atomic_dir
from pipeline.tiny import byte_tokenizer, random_model

_BYTE_TOKENS = {"bos_token_id": 256, "eos_token_id": 257, "pad_token_id": 257}

# Published configs (sizes and layout; Llama-3.2's long-context RoPE scaling is left out: it changes no cost).
ARCHITECTURES: dict[str, tuple[str, dict[str, Any]]] = {
    "llama-3.2-1b": ("llama", {
        "hidden_size": 2048, "intermediate_size": 8192, "num_hidden_layers": 16, "num_attention_heads": 32,
        "num_key_value_heads": 8, "head_dim": 64, "vocab_size": 128256, "max_position_embeddings": 131072,
        "rms_norm_eps": 1e-5, "rope_theta": 500000.0, "tie_word_embeddings": True, "hidden_act": "silu",
    }),
    "tinyllama-1.1b": ("llama", {
        "hidden_size": 2048, "intermediate_size": 5632, "num_hidden_layers": 22, "num_attention_heads": 32,
        "num_key_value_heads": 4, "vocab_size": 32000, "max_position_embeddings": 2048, "rms_norm_eps": 1e-5,
        "rope_theta": 10000.0, "tie_word_embeddings": False, "hidden_act": "silu",
    }),
    "opt-1.3b": ("opt", {
        "hidden_size": 2048, "ffn_dim": 8192, "num_hidden_layers": 24, "num_attention_heads": 32,
        "vocab_size": 50272, "max_position_embeddings": 2048, "word_embed_proj_dim": 2048,
        "do_layer_norm_before": True, "activation_function": "relu", "enable_bias": True,
    }),
}


def build_config(arch: str, layers: int | None) -> tuple[str, Any]:
    from transformers import LlamaConfig, OPTConfig

    family, values = ARCHITECTURES[arch]
    values = {**values, **_BYTE_TOKENS}
    if layers is not None:
        values["num_hidden_layers"] = layers
    return family, (LlamaConfig if family == "llama" else OPTConfig)(**values)


def parameter_count(config: Any) -> int:
    import torch
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        return sum(p.numel() for p in AutoModelForCausalLM.from_config(config).parameters())


def _write(directory: Path, config: Any, seed: int) -> None:
    with atomic_dir(directory) as tmp:
        random_model(config, seed=seed).save_pretrained(tmp)
        byte_tokenizer().save_pretrained(tmp)


def write_model(directory: Path, config: Any, seed: int) -> Path:
    """The random model and tokenizer as a local HF folder; reused when it is already there (built atomically).

    Built in a spawned process: a stage forked from a parent that once held the weights would report the
    parent's memory as its own peak RSS.
    """
    if not (directory / "config.json").exists():
        builder = multiprocessing.get_context("spawn").Process(target=_write, args=(directory, config, seed))
        builder.start()
        builder.join()
        if builder.exitcode != 0:
            raise SystemExit(f"building the random model in {directory} failed (exit code {builder.exitcode})")
    return directory


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--arch", choices=sorted(ARCHITECTURES), default="llama-3.2-1b")
    parser.add_argument("--layers", type=int, default=None, help="keep only this many blocks (smoke runs)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--calibration", default="paper")
    parser.add_argument("--root", default="outputs/bench-random")
    parser.add_argument("--rates", type=float, nargs=2, default=[0.25, 0.3])
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args()
    family, config = build_config(args.arch, args.layers)
    name = f"random-{args.arch}" + (f"-{args.layers}l" if args.layers else "")
    directory = write_model(Path(args.root) / "random-weights" / f"{name}-seed{args.seed}", config, args.seed)
    print(f"{name}: {parameter_count(config) / 1e9:.2f}B parameters, {config.num_hidden_layers} blocks, at {directory}")
    model = [f"model.name={name}", f"model.family={family}", f"model.source={directory.resolve()}",
             "model.source_kind=hf", "model.gguf_file=null", "model.dtype=float32", "model.max_seq_len=2048"]
    measure_stages([*model, f"calibration={args.calibration}", f"paths.root={args.root}", *args.overrides],
                   args.rates)


if __name__ == "__main__":
    main()
