"""Is the KL probe measuring what it should? The quadratic regime, the estimator, seeds, token counts, and massive
activations, on the default calibration of a real model.

    .venv/bin/python benchmarks/probe_check.py                      # SmolLM2, the default calibration
    .venv/bin/python benchmarks/probe_check.py --noise-sequences 1  # quicker

Prints, per layer and module (attention output, MLP output):
- the noise probe's 2·KL/σ² at σ = 2% and 4% of the output's RMS: in the quadratic regime the KL grows 4× when σ
  doubles, so the two agree; a ratio far from 1 means the probe left that regime;
- the backward-pass estimate (what the solve uses) against the noise probe at 2%: the same tr F two ways;
- the spread of the backward-pass estimate over seeds at 8 and at 32 probe sequences (coefficient of variation);
- the module output's largest channel RMS over its median (massive activations where it is in the hundreds).
"""

from __future__ import annotations

import argparse
import statistics

import torch

from pipeline.adapters import adapter_for
from pipeline.artifacts import ArtifactPaths
from pipeline.config import compose_config, validate
from pipeline.dense import load_model
from pipeline.methods.modegpt.probe import kl_sensitivity
from pipeline.methods.modegpt.probe_by_noise import kl_sensitivity_by_noise
from pipeline.readers import load_tokens
from stages import prepare, tokenize


def channel_ratio(adapter, input_ids: torch.Tensor) -> torch.Tensor:
    """[layers, 2]: max over channels of the output's RMS / the median channel's, at o_proj and down_proj."""
    sums: dict[tuple[int, int], torch.Tensor] = {}
    handles = []
    for index, layer in enumerate(adapter.layers()):
        for site, linear in enumerate((layer.o_proj, layer.down_proj)):
            def hook(m, a, out, key=(index, site)) -> None:
                sums[key] = sums.get(key, 0) + out.detach().double().square().reshape(-1, out.shape[-1]).sum(0)
            handles.append(linear.register_forward_hook(hook))
    try:
        with torch.no_grad():
            adapter.model(input_ids=input_ids, use_cache=False)
    finally:
        for handle in handles:
            handle.remove()
    ratio = torch.zeros(adapter.num_layers, 2, dtype=torch.float64)
    for (index, site), s in sums.items():
        rms = s.sqrt()
        ratio[index, site] = rms.max() / rms.median()
    return ratio


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--noise-sequences", type=int, default=2)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args()
    cfg = compose_config(args.overrides)
    validate(cfg)
    prepare.run(cfg)
    tokenize.run(cfg)
    model = load_model(cfg, ArtifactPaths(cfg).dense_model).eval()
    adapter = adapter_for(model, cfg.model.family)
    ids = load_tokens(cfg)[0]
    cpu, batch = torch.device("cpu"), cfg.calibration.batch_size
    n = args.noise_sequences
    noise2 = kl_sensitivity_by_noise(adapter, ids, batch, cpu, sequences=n, relative_noise=0.02)
    noise4 = kl_sensitivity_by_noise(adapter, ids, batch, cpu, sequences=n, relative_noise=0.04)
    grad_same = kl_sensitivity(adapter, ids, batch, cpu, sequences=n)
    spreads = {}
    for sequences in (8, 32):
        runs = torch.stack([kl_sensitivity(adapter, ids, batch, cpu, sequences=sequences, seed=s)
                            for s in range(args.seeds)])
        spreads[sequences] = runs.std(0) / runs.mean(0)
    massive = channel_ratio(adapter, ids[:n])
    print(f"\n{cfg.model.name}: noise probe on {n} x 512 tokens; backward-pass seeds: {args.seeds}")
    print("| layer | module | 2KL/σ² at 2% | at 4% / at 2% | backward / noise (2%) | CV 8 seq | CV 32 seq | "
          "max/median channel RMS |")
    print("|---|---|---|---|---|---|---|---|")
    for layer in range(adapter.num_layers):
        for site, name in enumerate(("attention", "MLP")):
            print(f"| {layer} | {name} | {float(noise2[layer, site]):.4g} | "
                  f"{float(noise4[layer, site] / noise2[layer, site]):.3f} | "
                  f"{float(grad_same[layer, site] / noise2[layer, site]):.3f} | {float(spreads[8][layer, site]):.3f} "
                  f"| {float(spreads[32][layer, site]):.3f} | {float(massive[layer, site]):.0f} |")
    quad = (noise4 / noise2).flatten().tolist()
    est = (grad_same / noise2).flatten().tolist()
    print(f"\nat 4% / at 2%: median {statistics.median(quad):.3f}, range {min(quad):.3f}..{max(quad):.3f}")
    print(f"backward / noise: median {statistics.median(est):.3f}, range {min(est):.3f}..{max(est):.3f}")
    for sequences, cv in spreads.items():
        print(f"seed CV at {sequences} sequences: median {float(cv.median()):.3f}, max {float(cv.max()):.3f}")


if __name__ == "__main__":
    main()
