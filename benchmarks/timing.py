"""Timing and kernel-inspection helpers shared by the benchmark scripts."""

from __future__ import annotations

import time
from collections.abc import Callable

import torch
from torch.profiler import ProfilerActivity, profile


def synchronize(device: torch.device) -> None:
    """Wait for queued GPU work, so wall-clock timings cover it (no-op on CPU)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def best_seconds(fn: Callable[[], object], device: torch.device, repeats: int) -> float:
    """Best wall time of ``repeats`` calls of ``fn`` after one warm-up call."""
    fn()
    best = float("inf")
    for _ in range(repeats):
        synchronize(device)
        start = time.perf_counter()
        fn()
        synchronize(device)
        best = min(best, time.perf_counter() - start)
    return best


def sdpa_kernels(fn: Callable[[], object], device: torch.device) -> dict[str, int]:
    """Which SDPA kernels one call of ``fn`` runs, and how often (``attention_math`` is the slow fallback)."""
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with profile(activities=activities) as prof, torch.no_grad():
        fn()
    return {e.key.removeprefix("aten::_scaled_dot_product_"): e.count for e in prof.key_averages()
            if e.key.startswith("aten::_scaled_dot_product_")}
