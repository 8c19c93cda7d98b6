"""Work models and the measured matmul rate that the cost benchmarks divide by (nominal FLOP counts).

Capture: forward = 2 x block linear parameters x tokens + causal attention (2 x T^2 x d per sequence and
layer) in the model dtype; correlations = 2 x tokens x (d^2 + D^2) per layer in FP64 (the small per-head
energies are ignored).

Solve, per layer in FP64, with textbook operation counts (Cholesky n^3/3, the inverse from the factor
2n^3/3, symmetric eigendecomposition with vectors ~9n^3):
- ridge leverage D^3 (on CUDA one triangular solve does 4/3 D^3 instead, so the fraction reads low there);
- C W_D once 2D^2 d (the Nystrom right-hand side is its rows J), refit k^3/3 + 2k^2 d, error 2kDd;
- C^1/2 and C^-1/2 9d^3 + 4d^3, whitened values 4 d^2 n_kv d_H.
SVDs of d x d_H blocks are small and left out, so the solve fraction is a slight underestimate.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

import torch

from pipeline.adapters import BlockShape
from pipeline.plan import LayerPlan


def matmul_rate(dtype: torch.dtype, device: torch.device, n: int | None = None, repeats: int = 5,
                per_timing: int | None = None) -> float:
    """Sustained FLOP/s of n x n matmuls in ``dtype``: the best of ``repeats`` timings of ``per_timing`` products.

    On a GPU one 2048² product takes tens of microseconds, no more than the launch and sync around it, so
    there the default is n = 8192, 10 products per timing, timed with CUDA events.
    """
    cuda = device.type == "cuda"
    n = n or (8192 if cuda else 2048)
    per_timing = per_timing or (10 if cuda else 1)
    a = torch.randn(n, n, dtype=dtype, device=device)
    b = torch.randn(n, n, dtype=dtype, device=device)
    best = float("inf")
    for _ in range(repeats + 1):  # the first round warms up
        if cuda:
            start_event, end_event = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start_event.record()
            for _ in range(per_timing):
                a @ b
            end_event.record()
            end_event.synchronize()
            seconds = start_event.elapsed_time(end_event) / 1e3
        else:
            start = time.perf_counter()
            for _ in range(per_timing):
                a @ b
            seconds = time.perf_counter() - start
        best = min(best, seconds)
    return 2 * n**3 * per_timing / best


def capture_flops(shape: BlockShape, block_linear_params: int, layers: int, samples: int,
                  seq_len: int) -> tuple[float, float]:
    """(forward FLOPs in the model dtype, FP64 correlation FLOPs) of one capture pass."""
    tokens = samples * seq_len
    attention = layers * samples * 2 * seq_len**2 * shape.hidden_size
    forward = 2 * block_linear_params * tokens + attention
    correlations = layers * 2 * tokens * (shape.hidden_size**2 + shape.intermediate_size**2)
    return float(forward), float(correlations)


def solve_flops(shape: BlockShape, plans: Sequence[LayerPlan]) -> float:
    """Nominal FP64 FLOPs of a MoDeGPT solve over ``plans`` (one entry per layer)."""
    d, big_d, heads = shape.hidden_size, shape.intermediate_size, shape.heads
    total = 0.0
    for plan in plans:
        k = plan.mlp_width
        mlp = big_d**3 + 2 * big_d**2 * d + k**3 / 3 + 2 * k**2 * d + 2 * k * big_d * d
        value_output = 13 * d**3 + 4 * d**2 * heads.num_kv_heads * heads.head_dim
        total += mlp + value_output
    return total


def ideal_seconds(flops_by_rate: Sequence[tuple[float, float]]) -> float:
    """Seconds the work would take at the measured rates: sum of FLOPs / (FLOP/s)."""
    return sum(work / rate for work, rate in flops_by_rate)
