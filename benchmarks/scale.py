"""Artifact sizes and per-stage peak memory for real model sizes, computed from their architectures.

The architectures are those of the models' published ``config.json`` files. Each is instantiated on the
meta device (no memory, no download) and measured with the same adapters and statistic shapes the
pipeline uses, so the figures follow the code.

    .venv/bin/python benchmarks/scale.py                 # paper calibration: 128 x 2048 tokens, rate 0.25
    .venv/bin/python benchmarks/scale.py --samples 256 --rate 0.3
"""

from __future__ import annotations

import argparse
from typing import Any

import torch
from transformers import AutoModelForCausalLM, LlamaConfig, OPTConfig

from pipeline.adapters import adapter_for
from pipeline.capture import stat_shapes
from pipeline.modegpt import kept_dim

# Published config.json values (hidden, MLP width, layers, heads, KV heads, vocabulary).
ARCHITECTURES: dict[str, tuple[str, dict[str, Any]]] = {
    "smollm2-135m": ("llama", dict(hidden_size=576, intermediate_size=1536, num_hidden_layers=30,
                                   num_attention_heads=9, num_key_value_heads=3, vocab_size=49152,
                                   tie_word_embeddings=True)),
    "llama2-7b": ("llama", dict(hidden_size=4096, intermediate_size=11008, num_hidden_layers=32,
                                num_attention_heads=32, num_key_value_heads=32, vocab_size=32000)),
    "llama2-13b": ("llama", dict(hidden_size=5120, intermediate_size=13824, num_hidden_layers=40,
                                 num_attention_heads=40, num_key_value_heads=40, vocab_size=32000)),
    "llama2-70b": ("llama", dict(hidden_size=8192, intermediate_size=28672, num_hidden_layers=80,
                                 num_attention_heads=64, num_key_value_heads=8, vocab_size=32000)),
    "llama3-8b": ("llama", dict(hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
                                num_attention_heads=32, num_key_value_heads=8, vocab_size=128256)),
    "llama3-70b": ("llama", dict(hidden_size=8192, intermediate_size=28672, num_hidden_layers=80,
                                 num_attention_heads=64, num_key_value_heads=8, vocab_size=128256)),
    "opt-66b": ("opt", dict(hidden_size=9216, ffn_dim=36864, num_hidden_layers=64, num_attention_heads=72,
                            vocab_size=50272, word_embed_proj_dim=9216)),
}
GIB = 2**30


def measure(name: str, samples: int, seq_len: int, batch: int, rate: float, dtype_bytes: int) -> dict[str, float]:
    family, arch = ARCHITECTURES[name]
    config = (LlamaConfig if family == "llama" else OPTConfig)(**arch)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    adapter = adapter_for(model, family)
    shape, heads, layers = adapter.block_shape(), adapter.head_layout(), adapter.num_layers
    d, D = shape.hidden_size, shape.intermediate_size
    per_layer_stats = sum(int(torch.tensor(s).prod()) if s else 1 for s in stat_shapes(d, D, heads).values())
    block = shape.dense_linear_params(adapter.bias_flags())
    total = adapter.total_params()
    non_block = total - block * layers
    k_mlp, k_h = kept_dim(D, rate), kept_dim(heads.head_dim, rate)
    tokens = samples * seq_len
    # capture: one block + all hidden states + FP64 sums + one batch's activations (and their FP64 copies)
    capture = (block * dtype_bytes + tokens * d * dtype_bytes + per_layer_stats * 8
               + batch * seq_len * (D * (3 * dtype_bytes + 8) + d * 8) + non_block * dtype_bytes)
    # solve: the FP64 sums, their mean, a Cholesky factor and its inverse (ridge leverage; 4 D x D at once),
    # plus the layer's weights in FP64
    solve = (4 * (D * D + d * d)) * 8 + block * 8
    solve_out = layers * (k_mlp * d + heads.num_kv_heads * d * k_h + heads.num_heads * k_h * d + k_mlp) * 4
    compressed = total - layers * (block - shape.linear_params(k_mlp, k_h if not heads.rope else k_h - k_h % 2, k_h,
                                                                  adapter.bias_flags()))
    return {
        "params_b": total / 1e9,
        "store_gib": layers * per_layer_stats * 8 / GIB,
        "solve_out_gib": solve_out / GIB,
        "checkpoint_gib": compressed * dtype_bytes / GIB,
        "capture_device_gib": capture / GIB,
        "solve_device_gib": solve / GIB,
        "assemble_host_gib": (total + compressed) * dtype_bytes / GIB,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--samples", type=int, default=128)
    parser.add_argument("--seq-len", type=int, default=2048)
    parser.add_argument("--batch", type=int, default=2, help="calibration.batch_size during capture")
    parser.add_argument("--rate", type=float, default=0.25)
    parser.add_argument("--dtype-bytes", type=int, default=2, help="2 for bf16/fp16 weights")
    parser.add_argument("--models", nargs="+", default=list(ARCHITECTURES))
    args = parser.parse_args()
    print(f"calibration {args.samples} x {args.seq_len} tokens, capture batch {args.batch}, rate {args.rate}, "
          f"{args.dtype_bytes}-byte weights\n")
    print("| model | params | correlation store | solve output | checkpoint | capture peak (device) | "
          "solve peak (device) | assemble peak (host) |")
    print("|---|---|---|---|---|---|---|---|")
    for name in args.models:
        m = measure(name, args.samples, args.seq_len, args.batch, args.rate, args.dtype_bytes)
        print(f"| {name} | {m['params_b']:.2f} B | {m['store_gib']:.1f} GiB | {m['solve_out_gib']:.1f} GiB | "
              f"{m['checkpoint_gib']:.1f} GiB | {m['capture_device_gib']:.1f} GiB | {m['solve_device_gib']:.1f} GiB | "
              f"{m['assemble_host_gib']:.1f} GiB |")


if __name__ == "__main__":
    main()
