"""Capture-stage cost on the real default model: wall time, tokens/s, peak memory, and the achieved fraction
of this machine's measured matmul throughput.

    .venv/bin/python benchmarks/capture.py                       # default calibration (32 x 512)
    .venv/bin/python benchmarks/capture.py calibration=paper     # the paper's 128 x 2048

The capture runs into a fresh temporary store (the pipeline's own store is untouched). The FLOPs counted
are those of ``benchmarks/flops.py``.
"""

from __future__ import annotations

import argparse
import resource
import tempfile
import time

import torch
from flops import capture_flops, ideal_seconds, matmul_rate

from pipeline.adapters import adapter_for
from pipeline.artifacts import ArtifactPaths, read_manifest
from pipeline.config import compose_config, validate
from pipeline.dense import load_model, resolve_device, torch_dtype
from stages import capture, prepare, tokenize


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as store_root:
        cfg = compose_config([*args.overrides, f"paths.store_root={store_root}"])
        validate(cfg)
        prepare.run(cfg)
        tokenize.run(cfg)
        device = resolve_device(cfg.device)
        dtype = cfg.model.dtype
        model_rate, fp64 = matmul_rate(torch_dtype(dtype), device), matmul_rate(torch.float64, device)
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats()
        start = time.perf_counter()
        capture.run(cfg)
        wall = time.perf_counter() - start
        paths = ArtifactPaths(cfg)
        manifest = read_manifest(paths.store)
        model = load_model(cfg, paths.dense_model)
        adapter = adapter_for(model, cfg.model.family)
        shape = adapter.block_shape()
        c = cfg.calibration
        tokens = c.num_samples * c.seq_len
        layers = adapter.num_layers
        forward, correlations = capture_flops(shape, adapter.block_linear_params(), layers, c.num_samples,
                                              c.seq_len)
        ideal = ideal_seconds([(forward, model_rate), (correlations, fp64)])
        peak = (torch.cuda.max_memory_allocated() if device.type == "cuda"
                else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)
        print(f"model {cfg.model.name}, calibration {c.num_samples} x {c.seq_len} = {tokens} tokens, "
              f"device {device}, {torch.get_num_threads()} threads")
        print(f"capture wall time      {wall:.1f} s (stage total; layers alone {manifest.extra['seconds']:.1f} s)")
        print(f"throughput             {tokens * layers / manifest.extra['seconds']:.0f} token-layers/s, "
              f"{tokens / manifest.extra['seconds']:.0f} tokens/s through the whole model")
        print(f"peak memory            {peak / 2**30:.2f} GiB ({'device' if device.type == 'cuda' else 'process RSS'})")
        print(f"store size             {manifest.extra['bytes'] / 2**20:.1f} MiB")
        print(f"measured matmul rate   {dtype} {model_rate / 1e9:.1f} GFLOP/s, fp64 {fp64 / 1e9:.1f} GFLOP/s")
        print(f"work                   forward {forward / 1e12:.2f} TFLOP ({dtype}), correlations "
              f"{correlations / 1e12:.2f} TFLOP (fp64)")
        print(f"achieved fraction      {ideal / manifest.extra['seconds']:.1%} of the measured matmul throughput")


if __name__ == "__main__":
    main()
