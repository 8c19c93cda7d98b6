"""Where one layer's solve spends its time, on the real default model and its correlation store.

    .venv/bin/python benchmarks/solve_profile.py                         # layer 5, default calibration
    .venv/bin/python benchmarks/solve_profile.py --layer 12 -- calibration=paper device=cuda

Needs a complete store for the config (``modegpt capture`` first). Prints the best-of-N wall time of
``solve_modegpt_layer`` and of its parts, the ridge leverage scores both ways (Cholesky, as the solver
computes them, and the eigendecomposition form), and torch.profiler's top operators for one layer.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

import torch
from timing import best_seconds
from torch.profiler import ProfilerActivity, profile

from pipeline.adapters import adapter_for
from pipeline.artifacts import ArtifactPaths
from pipeline.config import compose_config, validate
from pipeline.dense import load_model, resolve_device
from pipeline.methods import SolveInputs
from pipeline.methods.modegpt import ModeGPT, ModegptSettings
from pipeline.methods.modegpt import curves as modegpt_curves
from pipeline.methods.modegpt import layer as modegpt_layer
from pipeline.modegpt import mlp, vo
from pipeline.readers import block_influence_of, open_store

# (module, function) pairs timed inside one solve_modegpt_layer call.
PARTS = [(mlp, "_leverage_scores"), (mlp, "_nystrom_update"), (vo, "psd_sqrt_pair"), (modegpt_layer, "vo_svd"),
         (modegpt_layer, "mlp_quadratic_error"), (modegpt_layer, "vo_residual"),
         (modegpt_layer, "head_output_energy"), (modegpt_layer, "cr_select")]


def timed_parts(run: Callable[[], object]) -> dict[str, float]:
    """Seconds spent in each of PARTS during one ``run()``, by temporarily wrapping them."""
    spent: dict[str, float] = {}
    originals = {(m, name): getattr(m, name) for m, name in PARTS}

    def wrap(name: str, fn: Callable) -> Callable:
        def timed(*args: object, **kwargs: object) -> object:
            start = time.perf_counter()
            out = fn(*args, **kwargs)
            spent[name] = spent.get(name, 0.0) + time.perf_counter() - start
            return out
        return timed

    try:
        for (m, name), fn in originals.items():
            setattr(m, name, wrap(name, fn))
        run()
    finally:
        for (m, name), fn in originals.items():
            setattr(m, name, fn)
    return spent


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--layer", type=int, default=5)
    parser.add_argument("--rate", type=float, default=0.3)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args()
    cfg = compose_config(args.overrides)
    validate(cfg)
    device = resolve_device(cfg.device)
    store, store_manifest = open_store(cfg)
    adapter = adapter_for(load_model(cfg, ArtifactPaths(cfg).dense_model), cfg.model.family)
    heads, k = adapter.head_layout(), cfg.compression
    settings = ModegptSettings.from_config(k)
    # The plan under the paper's allocation (BI): the error allocation's curves are timed on their own below.
    bi = compose_config([*args.overrides, "compression.allocation=bi"]).compression
    inputs = SolveInputs(cfg, adapter, store, store_manifest.fingerprint,
                         block_influence_of(cfg, store, adapter.num_layers), device)
    plans = ModeGPT().plan(inputs, args.rate, bi)
    stats = {n: t.to(device) for n, t in store.read_layer(args.layer, verify=False).items()}
    dense = modegpt_layer.DenseLayer.from_layer(adapter.layer(args.layer), heads, device)

    def solve_layer() -> object:
        return modegpt_layer.solve_modegpt_layer(stats, dense, plans[args.layer], heads, settings)

    corr = stats["mlp_gram"] / stats["tokens"]
    total = best_seconds(solve_layer, device, args.repeats)
    print(f"model {cfg.model.name}, layer {args.layer}, rate {args.rate}, D = {corr.shape[0]}, device {device}, "
          f"{torch.get_num_threads()} threads")
    print(f"solve_modegpt_layer: {total:.3f} s (best of {args.repeats})")
    for name, seconds in timed_parts(solve_layer).items():
        print(f"  {name:24s} {seconds:.4f} s")
    cholesky = best_seconds(lambda: mlp.ridge_leverage_scores(corr, k.ridge_lambda), device, args.repeats)
    eigh = best_seconds(lambda: mlp._leverage_from_eigh(corr, k.ridge_lambda), device, args.repeats)
    print(f"ridge leverage scores: Cholesky {cholesky:.4f} s, eigendecomposition {eigh:.4f} s")
    shape = adapter.block_shape()
    # under curve_scale=kl the curves are scaled by the probe's result, which this timing does not need: unit values
    probed = stats | {"sensitivity": torch.ones(2, dtype=torch.float64)}
    curves = best_seconds(lambda: modegpt_curves.module_error_curves(probed, dense, shape, settings, k.max_sparsity),
                          device, 1)
    print(f"module error curves (compression.allocation=error, once per layer and store): {curves:.3f} s")
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with profile(activities=activities) as prof:
        solve_layer()
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=12))


if __name__ == "__main__":
    main()
