"""Inference throughput of the dense and the compressed model, measured side by side in one run.

    .venv/bin/python benchmarks/throughput.py                         # default model at compression.rate
    .venv/bin/python benchmarks/throughput.py compression.rate=0.3 device=cuda

Prefill: tokens/s of one forward pass over (batch x seq_len) tokens. Decode: new tokens/s of greedy
generation with the KV cache after a short prompt. Each timing is the median of --repeats runs after a
warm-up, alternating dense and compressed so drift hits both alike. It also lists the SDPA kernels a
prefill runs: one fused kernel call per layer (no per-head Python loop, no math-kernel fallback).
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from functools import partial

import torch
from timing import sdpa_kernels, synchronize
from transformers import AutoModelForCausalLM

import pipeline.assembly  # noqa: F401 - registers the compressed classes
from pipeline.adapters import adapter_for
from pipeline.artifacts import ArtifactPaths
from pipeline.assembly import build_compressed_model
from pipeline.config import compose_config, validate
from pipeline.dense import load_model, resolve_device, torch_dtype
from pipeline.readers import checkpoint_dir, load_solution


@torch.no_grad()
def prefill_seconds(model: torch.nn.Module, ids: torch.Tensor) -> float:
    synchronize(ids.device)
    start = time.perf_counter()
    model(ids, use_cache=False)
    synchronize(ids.device)
    return time.perf_counter() - start


@torch.no_grad()
def decode_seconds(model: torch.nn.Module, prompt: torch.Tensor, new_tokens: int) -> float:
    synchronize(prompt.device)
    start = time.perf_counter()
    model.generate(prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=new_tokens,
                   min_new_tokens=new_tokens, do_sample=False, use_cache=True)
    synchronize(prompt.device)
    return time.perf_counter() - start


def prefill_kernels(model: torch.nn.Module, ids: torch.Tensor) -> dict[str, int]:
    """SDPA kernels one prefill forward runs: one fused call per layer, no math-kernel fallback expected."""
    return sdpa_kernels(partial(model, ids, use_cache=False), ids.device)


def paired_medians(timers: dict[str, Callable[[], float]], repeats: int) -> dict[str, float]:
    """Median seconds of each timer, run alternately (after one warm-up each) so drift hits all alike."""
    for fn in timers.values():
        fn()
    samples: dict[str, list[float]] = {k: [] for k in timers}
    for _ in range(repeats):
        for k, fn in timers.items():
            samples[k].append(fn())
    return {k: statistics.median(v) for k, v in samples.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 4])
    parser.add_argument("--seq-lens", type=int, nargs="+", default=[128, 512])
    parser.add_argument("--decode-batch-sizes", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args()
    cfg = compose_config(args.overrides)
    validate(cfg)
    device = resolve_device(cfg.device)
    ckpt = checkpoint_dir(cfg)
    dense = load_model(cfg, ArtifactPaths(cfg).dense_model).to(device)
    compressed = AutoModelForCausalLM.from_pretrained(ckpt, dtype=torch_dtype(cfg.model.dtype)).to(device).eval()
    models = {"dense": dense, "compressed": compressed}
    params = {k: sum(p.numel() for p in m.parameters()) for k, m in models.items()}
    vocab = dense.config.vocab_size
    gen = torch.Generator().manual_seed(0)
    print(f"model {cfg.model.name}, checkpoint {ckpt.name}, device {device}, dtype {cfg.model.dtype}, "
          f"{torch.get_num_threads()} threads")
    print(f"parameters: dense {params['dense'] / 1e6:.1f}M, compressed {params['compressed'] / 1e6:.1f}M "
          f"({1 - params['compressed'] / params['dense']:.1%} fewer)")
    probe = torch.randint(0, vocab, (1, 16), generator=gen).to(device)
    # Round trip: the saved checkpoint reproduces the model built in memory from the solve artifact.
    plans, solutions, _ = load_solution(cfg)
    rebuilt = build_compressed_model(dense, adapter_for(dense, cfg.model.family), plans, solutions).eval()
    with torch.no_grad():
        same = torch.equal(rebuilt(probe).logits, compressed(probe).logits)
    print(f"saved checkpoint logits == in-memory build from the solve artifact: {same}")
    del rebuilt
    layers = compressed.config.num_hidden_layers
    print(f"SDPA kernels per prefill forward ({layers} layers): compressed {prefill_kernels(compressed, probe)}, "
          f"dense {prefill_kernels(dense, probe)}")
    print("\n| phase | batch | tokens | dense tok/s | compressed tok/s | speed-up |\n|---|---|---|---|---|---|")
    for batch in args.batch_sizes:
        for seq in args.seq_lens:
            ids = torch.randint(0, vocab, (batch, seq), generator=gen).to(device)
            t = paired_medians({k: partial(prefill_seconds, m, ids) for k, m in models.items()}, args.repeats)
            rate = {k: batch * seq / v for k, v in t.items()}
            print(f"| prefill | {batch} | {seq} | {rate['dense']:.0f} | {rate['compressed']:.0f} | "
                  f"{rate['compressed'] / rate['dense']:.2f}x |", flush=True)
    for batch in args.decode_batch_sizes:
        prompt = torch.randint(0, vocab, (batch, 32), generator=gen).to(device)
        t = paired_medians({k: partial(decode_seconds, m, prompt, args.new_tokens) for k, m in models.items()},
                           args.repeats)
        rate = {k: batch * args.new_tokens / v for k, v in t.items()}
        print(f"| decode | {batch} | {args.new_tokens} new | {rate['dense']:.1f} | {rate['compressed']:.1f} | "
              f"{rate['compressed'] / rate['dense']:.2f}x |", flush=True)


if __name__ == "__main__":
    main()
