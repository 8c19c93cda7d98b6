"""Wall time and peak memory of each stage on the default model, each stage in its own process.

    .venv/bin/python benchmarks/compress_cost.py                        # the paper's 128 x 2048 calibration
    .venv/bin/python benchmarks/compress_cost.py --calibration default  # 32 x 512, quick

Runs into its own artifact root (``outputs/bench-cost``), so the first pass computes everything; the last
row is a second compression rate given the cached capture, which is what every further rate costs.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time

from pipeline.artifacts import ArtifactPaths, read_manifest
from pipeline.config import compose_config


def run_stage(stage: str, overrides: list[str]) -> tuple[float, float]:
    """(wall seconds, peak RSS GiB) of ``modegpt <stage>`` in a fresh process."""
    start = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-m", "stages.cli", stage, *overrides],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - start
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"modegpt {stage} failed:\n{proc.stderr.read().decode()[-3000:]}")
    return wall, usage.ru_maxrss / 2**20  # ru_maxrss is KiB on Linux


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--calibration", default="paper")
    parser.add_argument("--root", default="outputs/bench-cost")
    parser.add_argument("--rates", type=float, nargs=2, default=[0.25, 0.3])
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args()
    base = [f"calibration={args.calibration}", f"paths.root={args.root}", *args.overrides]
    first, second = (f"compression.rate={r}" for r in args.rates)
    plan = [("prepare", []), ("tokenize", []), ("capture", []), ("solve", [first]), ("assemble", [first]),
            ("solve", [second])]
    rows = []
    for stage, extra in plan:
        wall, peak = run_stage(stage, [*base, *extra])
        label = f"{stage} ({extra[0]})" if extra else stage
        rows.append((label, wall, peak))
        print(f"{label:32s} {wall:8.1f} s  peak RSS {peak:6.2f} GiB", flush=True)
    paths = ArtifactPaths(compose_config(base))
    store = read_manifest(paths.store)
    solve_second = read_manifest(paths.solve(args.rates[1]))
    print(f"\ncalibration {paths.calibration_key}; store {store.extra['bytes'] / 2**20:.0f} MiB, "
          f"{store.extra['tokens']} tokens, capture layers {store.extra['seconds']:.1f} s; "
          f"second rate solved in {solve_second.extra['seconds']:.1f} s of layer work without a forward pass")
    print("\n| stage | wall time | peak RSS |\n|---|---|---|")
    for label, wall, peak in rows:
        print(f"| {label} | {wall:.1f} s | {peak:.2f} GiB |")


if __name__ == "__main__":
    main()
