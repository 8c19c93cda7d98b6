"""Which SDPA kernel runs, and how fast, when q/k and v have different head widths (as after compression).

    .venv/bin/python benchmarks/attention_kernels.py                     # CPU, 4 x 9 heads x 512 tokens
    .venv/bin/python benchmarks/attention_kernels.py --device cuda --dtype bfloat16 --seq-len 2048

For each (qk, v) pair: plain SDPA on the unequal widths (what the compressed attention did before it
padded), and the compressed model's own ``_attend``, which zero-pads q/k/v to one ``kernel_width``.
Prints the kernel each one ran and its best time over --repeats calls.
"""

from __future__ import annotations

import argparse
from functools import partial

import torch
import torch.nn.functional as F
from timing import best_seconds, sdpa_kernels

from pipeline.modeling.modeling_modegpt import _attend


def plain_sdpa(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, groups: int, scale: float) -> torch.Tensor:
    """SDPA on the widths as they are, KV repeated per group: the compressed attention before padding."""
    return F.scaled_dot_product_attention(q, k.repeat_interleave(groups, 1), v.repeat_interleave(groups, 1),
                                          is_causal=True, scale=scale)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--heads", type=int, default=9)
    parser.add_argument("--kv-heads", type=int, default=3)
    parser.add_argument("--seq-len", type=int, default=512)
    parser.add_argument("--widths", default="64:64,48:48,48:40,44:45", help="qk:v pairs")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args()
    device, dtype = torch.device(args.device), getattr(torch, args.dtype)
    groups = args.heads // args.kv_heads
    print(f"batch {args.batch}, {args.heads} heads ({args.kv_heads} KV), {args.seq_len} tokens, causal, "
          f"{device}, {args.dtype}, {torch.get_num_threads()} threads\n")
    print("| qk | v | plain SDPA kernel | plain ms | padded kernel | padded ms |\n|---|---|---|---|---|---|")
    for pair in args.widths.split(","):
        qk, v = (int(x) for x in pair.split(":"))
        shape = (args.batch, args.heads, args.seq_len)
        q = torch.randn(*shape, qk, device=device, dtype=dtype)
        k = torch.randn(args.batch, args.kv_heads, args.seq_len, qk, device=device, dtype=dtype)
        val = torch.randn(args.batch, args.kv_heads, args.seq_len, v, device=device, dtype=dtype)
        plain = partial(plain_sdpa, q, k, val, groups, 64**-0.5)
        padded = partial(_attend, q, k, val, None, scale=64**-0.5, dropout=0.0)
        torch.testing.assert_close(plain(), padded(), atol=1e-4, rtol=1e-3)
        cells = []
        for fn in (plain, padded):
            milliseconds = best_seconds(fn, device, args.repeats) * 1e3
            cells += [", ".join(sorted(sdpa_kernels(fn, device))), f"{milliseconds:.2f}"]
        print(f"| {qk} | {v} | " + " | ".join(cells) + " |", flush=True)


if __name__ == "__main__":
    main()
