"""Wall time and peak memory of each stage on the default model, each stage in its own process.

    .venv/bin/python benchmarks/compress_cost.py                        # the paper's 128 x 2048 calibration
    .venv/bin/python benchmarks/compress_cost.py --calibration default  # 32 x 512, quick

Runs into its own artifact root (``outputs/bench-cost``), so the first pass computes everything; the last
row is a second compression rate given the cached capture, which is what every further rate costs.
Capture and solve are also put against this machine's measured matmul throughput, with the FLOP counts
of ``benchmarks/flops.py`` (``device=cuda`` among the overrides measures the GPU; peak GPU memory then
comes from the stages' manifests).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from typing import Any

import torch
from flops import capture_flops, ideal_seconds, matmul_rate, solve_flops

from pipeline.adapters import adapter_for
from pipeline.artifacts import ArtifactPaths, Manifest, read_json, read_manifest
from pipeline.config import compose_config
from pipeline.dense import load_model, resolve_device, torch_dtype
from pipeline.plan import LayerPlan


def run_stage(stage: str, overrides: list[str]) -> tuple[float, float]:
    """(wall seconds, peak RSS GiB) of ``modegpt <stage>`` in a fresh process."""
    # The log goes to a file, not a pipe: a long GPU stage could fill a pipe nobody reads until it exits.
    with tempfile.TemporaryFile() as log_file:
        start = time.perf_counter()
        proc = subprocess.Popen([sys.executable, "-m", "stages.cli", stage, *overrides],
                                stdout=subprocess.DEVNULL, stderr=log_file)
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - start
        if os.waitstatus_to_exitcode(status) != 0:
            log_file.seek(0)
            raise SystemExit(f"modegpt {stage} failed:\n{log_file.read().decode(errors='replace')[-3000:]}")
    return wall, usage.ru_maxrss / 2**20  # ru_maxrss is KiB on Linux


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--calibration", default="paper")
    parser.add_argument("--root", default="outputs/bench-cost")
    parser.add_argument("--rates", type=float, nargs=2, default=[0.25, 0.3])
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args()
    measure_stages([f"calibration={args.calibration}", f"paths.root={args.root}", *args.overrides], args.rates)


def measure_stages(base: list[str], rates: list[float]) -> None:
    """Run prepare .. solve (two rates) in fresh processes for the config ``base`` and print their costs."""
    first, second = (f"compression.rate={r}" for r in rates)
    plan = [("prepare", []), ("tokenize", []), ("capture", []), ("solve", [first]), ("assemble", [first]),
            ("solve", [second])]
    rows = []
    for stage, extra in plan:
        wall, peak = run_stage(stage, [*base, *extra])
        label = f"{stage} ({extra[0]})" if extra else stage
        rows.append((label, wall, peak))
        print(f"{label:32s} {wall:8.1f} s  peak RSS {peak:6.2f} GiB", flush=True)
    cfg = compose_config(base)
    paths = ArtifactPaths(cfg)
    store = read_manifest(paths.store)
    solves = [read_manifest(paths.solve(rate)) for rate in rates]
    print(f"\nmodel {cfg.model.name}, calibration {paths.calibration_key}; "
          f"store {store.extra['bytes'] / 2**20:.0f} MiB, {store.extra['tokens']} tokens, "
          f"capture layers {store.extra['seconds']:.1f} s; "
          f"second rate solved in {solves[1].extra['seconds']:.1f} s of layer work without a forward pass")
    print("\n| stage | wall time | peak RSS |\n|---|---|---|")
    for label, wall, peak in rows:
        print(f"| {label} | {wall:.1f} s | {peak:.2f} GiB |")
    named = [("capture", store), *((f"solve r={r}", m) for r, m in zip(rates, solves, strict=True))]
    for name, manifest in named:
        if manifest.extra.get("peak_device_bytes"):
            print(f"peak GPU memory, {name}: {manifest.extra['peak_device_bytes'] / 2**30:.2f} GiB")
    print_achieved_fractions(cfg, paths, store, solves, rates)


def print_achieved_fractions(cfg: Any, paths: ArtifactPaths, store: Manifest, solves: list[Manifest],
                             rates: list[float]) -> None:
    """Capture and solve layer time against the measured matmul throughput (FLOP model: benchmarks/flops.py)."""
    device = resolve_device(cfg.device)
    model_rate = matmul_rate(torch_dtype(cfg.model.dtype), device)
    fp64 = matmul_rate(torch.float64, device)
    adapter = adapter_for(load_model(cfg, paths.dense_model), cfg.model.family)
    shape, c = adapter.block_shape(), cfg.calibration
    forward, correlations = capture_flops(shape, adapter.block_linear_params(), adapter.num_layers,
                                          c.num_samples, c.seq_len)
    print(f"\nmeasured matmul rate on {device}: {cfg.model.dtype} {model_rate / 1e9:.1f} GFLOP/s, "
          f"fp64 {fp64 / 1e9:.1f} GFLOP/s")
    print("\n| stage | nominal work | layer time | at the measured rate | achieved fraction |\n|---|---|---|---|---|")
    ideal = ideal_seconds([(forward, model_rate), (correlations, fp64)])
    print(f"| capture | {forward / 1e12:.2f} TFLOP {cfg.model.dtype} + {correlations / 1e12:.2f} TFLOP fp64 | "
          f"{store.extra['seconds']:.1f} s | {ideal:.1f} s | {ideal / store.extra['seconds']:.1%} |")
    for rate, manifest in zip(rates, solves, strict=True):
        plans = [LayerPlan(**p) for p in read_json(paths.plan(rate))["layers"]]
        work = solve_flops(shape, plans)
        print(f"| solve r={rate} | {work / 1e12:.3f} TFLOP fp64 | {manifest.extra['seconds']:.1f} s | "
              f"{work / fp64:.1f} s | {work / fp64 / manifest.extra['seconds']:.1%} |")

if __name__ == "__main__":
    main()
